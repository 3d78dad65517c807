//! The API server holds against careless and hostile requests: a dry-run delete deletes
//! nothing, a DELETE body that is not DeleteOptions is refused, patches cannot amplify
//! memory, and objects over upstream's size limits are refused. One server for all.

mod common;

use common::TestServer;
use serde_json::{json, Value};

use common::{assert_status as status, rss_bytes, RawClient as Client};

/// Creates a ConfigMap with these labels.
fn create_cm(c: &Client, name: &str, labels: Value) {
    let (code, v) = c.json(
        "POST",
        CMS,
        &json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}),
    );
    assert_eq!(code, 201, "{v}");
}

/// Whether the ConfigMap exists (any other answer than 200 or 404 fails).
fn exists(c: &Client, name: &str) -> bool {
    let (code, v) = c.get(&format!("{CMS}/{name}"));
    assert!(code == 200 || code == 404, "{code}: {v}");
    code == 200
}

const CMS: &str = "/api/v1/namespaces/default/configmaps";

#[test]
fn hardening() {
    let srv = TestServer::start();
    let c = Client::new(&srv);
    dry_run_deletes_delete_nothing(&srv, &c);
    delete_bodies_must_be_delete_options(&c);
    json_patches_cannot_amplify(&c);
    list_merges_stay_linear(&c);
    objects_over_the_size_limits(&c);
    request_details_as_upstream(&srv, &c);
}

fn request_details_as_upstream(srv: &TestServer, c: &Client) {
    create_cm(c, "rv", json!({}));
    // resourceVersion is a uint64: anything else is 400; one past the store's is 504.
    for q in ["abc", "-1"] {
        for path in [
            format!("{CMS}/rv"),
            CMS.to_string(),
            format!("{CMS}?watch=1"),
        ] {
            let sep = if path.contains('?') { '&' } else { '?' };
            status(
                c.get(&format!("{path}{sep}resourceVersion={q}")),
                400,
                "BadRequest",
                "resourceVersion: Invalid value",
            );
        }
    }
    for path in [format!("{CMS}/rv"), CMS.to_string()] {
        status(
            c.get(&format!("{path}?resourceVersion=18446744073709551615")),
            504,
            "Timeout",
            "Too large resource version",
        );
    }
    // A create must not carry a resourceVersion.
    status(
        c.json(
            "POST",
            CMS,
            &json!({"metadata": {"name": "with-rv", "resourceVersion": "5"}}),
        ),
        400,
        "BadRequest",
        "resourceVersion should not be set on objects to be created",
    );
    assert!(!exists(c, "with-rv"));
    // Every duplicate field is named in a warning, not only the first.
    let r = srv
        .client()
        .post(format!("{}{CMS}", srv.url()))
        .header("Content-Type", "application/json")
        .body(r#"{"metadata":{"name":"dups","name":"dups","labels":{"a":"1","a":"2"}},"data":{"k":"v","k":"w"}}"#)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let warnings: Vec<String> = r
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    for f in ["metadata.name", "metadata.labels.a", "data.k"] {
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(&format!("duplicate field \\\"{f}\\\""))),
            "no warning for {f}: {warnings:?}"
        );
    }
    // Impersonation is refused, not ignored (it would run as the caller).
    let r = srv
        .client()
        .get(format!("{}{CMS}", srv.url()))
        .header("Impersonate-User", "bob")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let v: Value = r.json().unwrap();
    assert_eq!(v["reason"], "Forbidden", "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("users \"bob\" is forbidden"),
        "{v}"
    );
    // A client certificate from another CA completes TLS and gets 401.
    let other = TestServer::start();
    let (ca, _, _) = srv.pems();
    let (_, cert, key) = other.pems();
    let stranger = common::admin_client((ca, cert, key));
    let r = stranger.get(format!("{}{CMS}", srv.url())).send().unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let v: Value = r.json().unwrap();
    assert_eq!(v["reason"], "Unauthorized", "{v}");
}

fn dry_run_deletes_delete_nothing(srv: &TestServer, c: &Client) {
    for n in ["dry-a", "dry-b", "dry-c"] {
        create_cm(c, n, json!({"batch": "dry"}));
    }
    // kubectl sends dryRun in the DELETE body, not the query.
    if let Some(k) = srv.kubectl() {
        let out = k.ok(&["delete", "configmap", "dry-a", "--dry-run=server"]);
        assert!(out.contains("dry-a"), "{out}");
        assert!(
            exists(c, "dry-a"),
            "kubectl delete --dry-run=server deleted dry-a"
        );
        let out = k.ok(&[
            "delete",
            "configmaps",
            "-l",
            "batch=dry",
            "--dry-run=server",
        ]);
        assert!(out.contains("dry-b"), "{out}");
        for n in ["dry-a", "dry-b", "dry-c"] {
            assert!(
                exists(c, n),
                "kubectl delete -l --dry-run=server deleted {n}"
            );
        }
    } else {
        eprintln!("SKIPPED (kubectl part): kubectl is not installed");
    }
    // The same by hand: the body's dryRun, on one object and on a collection.
    let body = json!({"propagationPolicy": "Background", "dryRun": ["All"]});
    let (code, v) = c.json("DELETE", &format!("{CMS}/dry-a"), &body);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["metadata"]["name"], "dry-a");
    let (code, v) = c.json("DELETE", &format!("{CMS}?labelSelector=batch%3Ddry"), &body);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["items"].as_array().map(Vec::len), Some(3), "{v}");
    // A body without dryRun does not cancel the query's.
    let (code, _) = c.json(
        "DELETE",
        &format!("{CMS}/dry-a?dryRun=All"),
        &json!({"kind": "DeleteOptions", "apiVersion": "v1"}),
    );
    assert_eq!(code, 200);
    for n in ["dry-a", "dry-b", "dry-c"] {
        assert!(exists(c, n), "a dry-run DELETE deleted {n}");
    }
    // A dry-run eviction leaves the pod.
    let pod = json!({"metadata": {"name": "evictee"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    let (code, v) = c.json("POST", "/api/v1/namespaces/default/pods", &pod);
    assert_eq!(code, 201, "{v}");
    // Nested in an Eviction, DeleteOptions' own kind and apiVersion are not checked.
    for options in [
        json!({"dryRun": ["All"]}),
        json!({"apiVersion": "policy/v1", "kind": "DeleteOptions", "dryRun": ["All"]}),
    ] {
        let ev = json!({"apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": "evictee"}, "deleteOptions": options});
        let (code, v) = c.json(
            "POST",
            "/api/v1/namespaces/default/pods/evictee/eviction",
            &ev,
        );
        assert_eq!(code, 201, "{v}");
        let (code, _) = c.get("/api/v1/namespaces/default/pods/evictee");
        assert_eq!(code, 200, "a dry-run eviction deleted the pod");
    }
    // Without dryRun the deletion happens.
    let (code, v) = c.json(
        "DELETE",
        &format!("{CMS}?labelSelector=batch%3Ddry"),
        &json!({"propagationPolicy": "Background"}),
    );
    assert_eq!(code, 200, "{v}");
    assert!(!exists(c, "dry-a") && !exists(c, "dry-c"));
}

fn delete_bodies_must_be_delete_options(c: &Client) {
    create_cm(c, "keep", json!({"batch": "keep"}));
    let refused = [
        (
            json!({"kind": "Pod", "apiVersion": "v1"}),
            "no kind \"Pod\" is registered",
        ),
        (
            json!({"kind": "Status", "apiVersion": "v1"}),
            "cannot be converted to DeleteOptions",
        ),
        (
            json!({"kind": "DeleteOptions", "apiVersion": "evil/v9"}),
            "for version \"evil/v9\"",
        ),
        (
            json!({"gracePeriodSeconds": "now"}),
            "cannot unmarshal string",
        ),
    ];
    for (body, words) in &refused {
        status(
            c.json("DELETE", &format!("{CMS}/keep"), body),
            400,
            "BadRequest",
            words,
        );
        status(
            c.json("DELETE", &format!("{CMS}?labelSelector=batch%3Dkeep"), body),
            400,
            "BadRequest",
            words,
        );
        assert!(
            exists(c, "keep"),
            "a DELETE with body {body} deleted the object"
        );
    }
    // Malformed JSON, and options upstream validates.
    status(
        c.send(
            "DELETE",
            &format!("{CMS}/keep"),
            "application/json",
            b"{\"dryRun\":".to_vec(),
        ),
        400,
        "BadRequest",
        "json parse error",
    );
    status(
        c.json(
            "DELETE",
            &format!("{CMS}/keep"),
            &json!({"dryRun": ["Some"]}),
        ),
        422,
        "Invalid",
        "dryRun: Unsupported value",
    );
    status(
        c.json(
            "DELETE",
            &format!("{CMS}/keep"),
            &json!({"orphanDependents": true, "propagationPolicy": "Orphan"}),
        ),
        422,
        "Invalid",
        "orphanDependents and deletionPropagation cannot be both set",
    );
    assert!(exists(c, "keep"));
    // Preconditions in the body are checked.
    let (_, cm) = c.get(&format!("{CMS}/keep"));
    status(
        c.json(
            "DELETE",
            &format!("{CMS}/keep"),
            &json!({"preconditions": {"uid": "not-the-uid"}}),
        ),
        409,
        "Conflict",
        "Precondition failed: UID in precondition: not-the-uid",
    );
    let (code, v) = c.json(
        "DELETE",
        &format!("{CMS}/keep"),
        &json!({"apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions",
            "preconditions": {"uid": cm["metadata"]["uid"], "resourceVersion": cm["metadata"]["resourceVersion"]}}),
    );
    assert_eq!(code, 200, "{v}");
    assert!(!exists(c, "keep"));
}

fn json_patches_cannot_amplify(c: &Client) {
    create_cm(c, "amp", json!({}));
    let path = format!("{CMS}/amp");
    let patch = |ops: &Value| {
        c.send(
            "PATCH",
            &path,
            "application/json-patch+json",
            serde_json::to_vec(ops).unwrap(),
        )
    };
    // 1 KB, then 30 copies of the whole map into itself: each would double it (a 2.5 KB
    // request asking for a terabyte).
    let mut ops = vec![
        json!({"op": "add", "path": "/data/a", "value": "x".repeat(1024)}),
        json!({"op": "add", "path": "/metadata/annotations", "value": {}}),
        json!({"op": "copy", "from": "/data", "path": "/metadata/annotations/d0"}),
    ];
    for i in 1..30 {
        ops.push(json!({"op": "copy", "from": "/metadata/annotations", "path": format!("/metadata/annotations/d{i}")}));
    }
    let before = rss_bytes();
    status(
        patch(&Value::Array(ops)),
        422,
        "Invalid",
        "the accumulated size increase of copy is",
    );
    let grown = rss_bytes().saturating_sub(before);
    // The copies stop at the 3 MiB cap, so the server never holds more than a few copies.
    assert!(grown < 64 << 20, "RSS grew by {} MiB", grown >> 20);
    // 10,001 operations are refused before any is applied.
    let ops = vec![json!({"op": "test", "path": "/metadata/name", "value": "amp"}); 10_001];
    status(
        patch(&Value::Array(ops)),
        413,
        "RequestEntityTooLarge",
        "The allowed maximum operations in a JSON patch is 10000, got 10001",
    );
    let ops = vec![json!({"op": "test", "path": "/metadata/name", "value": "amp"}); 10_000];
    let (code, v) = patch(&Value::Array(ops));
    assert_eq!(code, 200, "{v}");
    // Nothing of the refused patches was written.
    let (_, cm) = c.get(&path);
    assert!(cm.pointer("/data/a").is_none(), "{cm}");
}

fn list_merges_stay_linear(c: &Client) {
    // A strategic merge of many list items by key: answered (a quadratic merge of 20,000
    // by 20,000 items would hold the request for minutes); the pod is then invalid for
    // its own reasons, or accepted, but never a 500.
    let n = 20_000;
    let env: Vec<Value> = (0..n)
        .map(|i| json!({"name": format!("E{i}"), "value": "1"}))
        .collect();
    let tmpl = json!({"metadata": {"name": "many-env"}, "template": {"spec": {"containers": [
        {"name": "c", "image": "busybox", "env": env}]}}});
    let (code, v) = c.json("POST", "/api/v1/namespaces/default/podtemplates", &tmpl);
    assert_eq!(code, 201, "{}", v["message"]);
    let env: Vec<Value> = (0..n)
        .rev()
        .map(|i| json!({"name": format!("E{i}"), "value": "2"}))
        .collect();
    let smp = json!({"template": {"spec": {"containers": [{"name": "c", "env": env}]}}});
    let (code, v) = c.send(
        "PATCH",
        "/api/v1/namespaces/default/podtemplates/many-env",
        "application/strategic-merge-patch+json",
        serde_json::to_vec(&smp).unwrap(),
    );
    assert_eq!(code, 200, "{}", v["message"]);
    let env = v
        .pointer("/template/spec/containers/0/env")
        .and_then(Value::as_array)
        .unwrap();
    assert_eq!(env.len(), n);
    assert!(env.iter().all(|e| e["value"] == "2"));
}

fn objects_over_the_size_limits(c: &Client) {
    let mib = 1024 * 1024;
    // ConfigMap data: at most 1 MiB in all (data and binaryData together).
    let cm = |name: &str, data: Value, bin: Value| {
        c.json(
            "POST",
            CMS,
            &json!({"metadata": {"name": name}, "data": data, "binaryData": bin}),
        )
    };
    let (code, v) = cm("at-limit", json!({"a": "x".repeat(mib)}), json!({}));
    assert_eq!(code, 201, "{}", v["message"]);
    status(
        cm("over-limit", json!({"a": "x".repeat(mib + 1)}), json!({})),
        422,
        "Invalid",
        "ConfigMap \"over-limit\" is invalid: []: Too long: may not be more than 1048576 bytes",
    );
    use base64::Engine as _;
    let two_mib = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 2 * mib]);
    status(
        cm("binary-over", json!({}), json!({"b": two_mib})),
        422,
        "Invalid",
        "Too long: may not be more than 1048576 bytes",
    );
    status(
        cm(
            "split-over",
            json!({"a": "x".repeat(mib / 2 + 1)}),
            json!({"b": base64::engine::general_purpose::STANDARD.encode(vec![7u8; mib / 2])}),
        ),
        422,
        "Invalid",
        "Too long",
    );
    // Secrets: 1 MiB of decoded data.
    let sec = base64::engine::general_purpose::STANDARD.encode(vec![1u8; mib + 1]);
    status(
        c.json(
            "POST",
            "/api/v1/namespaces/default/secrets",
            &json!({"metadata": {"name": "big"}, "data": {"k": sec}}),
        ),
        422,
        "Invalid",
        "data: Too long: may not be more than 1048576 bytes",
    );
    // Any kind: the store refuses a write over 1.5 MiB, as etcd does.
    let tmpl = json!({"metadata": {"name": "huge"}, "template": {"spec": {"containers": [
        {"name": "c", "image": "busybox", "args": ["x".repeat(2 * mib)]}]}}});
    status(
        c.json("POST", "/api/v1/namespaces/default/podtemplates", &tmpl),
        413,
        "RequestEntityTooLarge",
        "etcdserver: request is too large",
    );
    let (code, _) = c.get("/api/v1/namespaces/default/podtemplates/huge");
    assert_eq!(code, 404);
    // And an update that would grow an object past it.
    let (code, v) = c.json(
        "POST",
        "/api/v1/namespaces/default/podtemplates",
        &json!({"metadata": {"name": "grows"}, "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}),
    );
    assert_eq!(code, 201, "{v}");
    status(
        c.send(
            "PATCH",
            "/api/v1/namespaces/default/podtemplates/grows",
            "application/merge-patch+json",
            serde_json::to_vec(&json!({"template": {"spec": {"containers": [{"name": "c", "image": "busybox", "args": ["x".repeat(2 * mib)]}]}}})).unwrap(),
        ),
        413,
        "RequestEntityTooLarge",
        "etcdserver: request is too large",
    );
}
