//! Bad input gets the Status upstream sends: the right code, reason and a message a
//! user understands. No panic, no 500, nothing half-written.

mod common;

use common::TestServer;
use serde_json::{json, Value};

use common::{assert_status as status, RawClient as Client};

const CMS: &str = "/api/v1/namespaces/default/configmaps";

#[test]
fn bad_input_gets_upstream_statuses() {
    let srv = TestServer::start();
    let c = Client::new(&srv);

    // A Status body is upstream's byte for byte: field order, omitted empties, newline.
    let cm = "{\"metadata\": {\"name\": \"twice\"}}";
    assert_eq!(c.post(CMS, cm).0, 201);
    let r = srv
        .client()
        .post(format!("{}{CMS}", srv.url()))
        .header("Content-Type", "application/json")
        .body(cm)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    // Every answer carries upstream's Audit-Id and Cache-Control headers.
    let audit = r.headers().get("audit-id").and_then(|v| v.to_str().ok());
    assert_eq!(audit.map(str::len), Some(36), "{:?}", r.headers());
    assert_eq!(
        r.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-cache, private")
    );
    assert_eq!(
        r.text().unwrap(),
        "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"configmaps \\\"twice\\\" already exists\",\"reason\":\"AlreadyExists\",\"details\":{\"name\":\"twice\",\"kind\":\"configmaps\"},\"code\":409}\n"
    );
    assert_eq!(
        c.send(
            "DELETE",
            &format!("{CMS}/twice"),
            "application/json",
            Vec::new()
        )
        .0,
        200
    );

    status(
        c.post(CMS, "{\"metadata\": {\"name\": "),
        400,
        "BadRequest",
        "json parse error",
    );
    status(
        c.send(
            "POST",
            CMS,
            "application/yaml",
            b"metadata: [unclosed".to_vec(),
        ),
        400,
        "BadRequest",
        "YAML",
    );
    status(
        c.post(CMS, "[1, 2]"),
        400,
        "BadRequest",
        "must be a JSON object",
    );
    status(
        c.post(
            CMS,
            r#"{"apiVersion": "apps/v1", "kind": "ConfigMap", "metadata": {"name": "x"}}"#,
        ),
        400,
        "BadRequest",
        "does not match the expected API version",
    );
    status(
        c.post(
            CMS,
            r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}"#,
        ),
        400,
        "BadRequest",
        "does not match the expected kind",
    );
    status(
        c.post(
            CMS,
            r#"{"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "b"}}"#,
        ),
        422,
        "Invalid",
        "metadata.name: Required value",
    );
    status(
        c.post(CMS, r#"{"metadata": {"name": "Not_Valid"}}"#),
        422,
        "Invalid",
        "RFC 1123",
    );
    status(
        c.post(CMS, r#"{"metadata": {"name": "t"}, "data": {"a": 5}}"#),
        400,
        "BadRequest",
        "data.a",
    );
    status(
        c.post(
            &format!("{CMS}?fieldValidation=Strict"),
            r#"{"metadata": {"name": "s", "bogus": 1}, "spec": {}}"#,
        ),
        400,
        "BadRequest",
        "strict decoding error: unknown field \"metadata.bogus\", unknown field \"spec\"",
    );
    status(
        c.post(
            &format!("{CMS}?fieldValidation=Strict"),
            r#"{"metadata": {"name": "d", "name": "d"}}"#,
        ),
        400,
        "BadRequest",
        "duplicate field \"metadata.name\"",
    );
    status(
        c.post(
            &format!("{CMS}?fieldValidation=Sometimes"),
            r#"{"metadata": {"name": "f"}}"#,
        ),
        400,
        "BadRequest",
        "fieldValidation",
    );
    // Warn (the default) keeps the object and says what was dropped.
    let r = c
        .http
        .post(format!("{}{CMS}", c.base))
        .header("Content-Type", "application/json")
        .body(r#"{"metadata": {"name": "warned"}, "bogus": true}"#)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let warning = r
        .headers()
        .get("warning")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(warning.contains("unknown field \\\"bogus\\\""), "{warning}");

    // A body over 3 MiB.
    let big = format!(
        r#"{{"metadata": {{"name": "big"}}, "data": {{"a": "{}"}}}}"#,
        "x".repeat(3 * 1024 * 1024 + 10)
    );
    status(
        c.post(CMS, &big),
        413,
        "RequestEntityTooLarge",
        "limit is 3145728",
    );

    // Selectors.
    status(
        c.send(
            "GET",
            &format!("{CMS}?labelSelector=a%20in%20b"),
            "",
            vec![],
        ),
        400,
        "BadRequest",
        "expected: '('",
    );
    status(
        c.send(
            "GET",
            &format!("{CMS}?fieldSelector=spec.nodeName=x"),
            "",
            vec![],
        ),
        400,
        "BadRequest",
        "field label not supported: spec.nodeName",
    );
    status(
        c.send("GET", "/api/v1/pods?fieldSelector=nonsense", "", vec![]),
        400,
        "BadRequest",
        "invalid field selector",
    );
    status(
        c.send("GET", &format!("{CMS}?limit=x"), "", vec![]),
        400,
        "BadRequest",
        "limit",
    );
    status(
        c.send("GET", &format!("{CMS}?continue=garbage"), "", vec![]),
        400,
        "BadRequest",
        "continue key is not valid",
    );

    // Stale resourceVersion, unknown resource, unsupported patch type, missing object.
    let (code, cm) = c.post(CMS, r#"{"metadata": {"name": "rv"}, "data": {"a": "1"}}"#);
    assert_eq!(code, 201, "{cm}");
    let mut stale = cm.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    stale["data"]["a"] = json!("2");
    status(
        c.send(
            "PUT",
            &format!("{CMS}/rv"),
            "application/json",
            stale.to_string().into_bytes(),
        ),
        409,
        "Conflict",
        "the object has been modified",
    );
    status(
        c.send("GET", "/api/v1/namespaces/default/widgets", "", vec![]),
        404,
        "NotFound",
        "could not find the requested resource",
    );
    status(
        c.send("PATCH", &format!("{CMS}/rv"), "text/plain", b"{}".to_vec()),
        415,
        "UnsupportedMediaType",
        "application/merge-patch+json",
    );
    // Server-side apply needs a field manager; force is for apply only; a body that is
    // not an object is refused before anything is written.
    status(
        c.send(
            "PATCH",
            &format!("{CMS}/rv"),
            "application/apply-patch+yaml",
            b"data: {a: '3'}".to_vec(),
        ),
        422,
        "Invalid",
        "fieldManager: Required value: is required for apply patch",
    );
    status(
        c.send(
            "PATCH",
            &format!("{CMS}/rv?force=true"),
            "application/merge-patch+json",
            b"{}".to_vec(),
        ),
        422,
        "Invalid",
        "force: Forbidden: may not be specified for non-apply patch",
    );
    status(
        c.send(
            "PATCH",
            &format!("{CMS}/rv?fieldManager=t"),
            "application/apply-patch+yaml",
            b"- just\n- a list".to_vec(),
        ),
        400,
        "BadRequest",
        "must be a JSON object",
    );
    status(
        c.send(
            "PATCH",
            &format!("{CMS}/rv?fieldManager=t"),
            "application/apply-patch+yaml",
            b"apiVersion: v1\nkind: Secret\nmetadata: {name: rv}".to_vec(),
        ),
        400,
        "BadRequest",
        "does not match the expected kind",
    );
    status(
        c.send("GET", &format!("{CMS}/nope"), "", vec![]),
        404,
        "NotFound",
        "configmaps \"nope\" not found",
    );
    status(
        c.send(
            "PATCH",
            &format!("{CMS}/rv"),
            "application/json-patch+json",
            br#"[{"op": "remove", "path": "/nope"}]"#.to_vec(),
        ),
        422,
        "Invalid",
        "missing path",
    );
    status(
        c.post(
            "/api/v1/namespaces/missing/configmaps",
            r#"{"metadata": {"name": "m"}}"#,
        ),
        404,
        "NotFound",
        "namespaces \"missing\" not found",
    );
    status(
        c.post(CMS, r#"{"metadata": {"name": "rv"}}"#),
        409,
        "AlreadyExists",
        "already exists",
    );
    status(
        c.send(
            "PUT",
            &format!("{CMS}/other"),
            "application/json",
            cm.to_string().into_bytes(),
        ),
        400,
        "BadRequest",
        "does not match the name on the URL",
    );

    // Nothing half-written: the stale update left the object as it was, and no rejected
    // create exists.
    let (code, after) = c.send("GET", &format!("{CMS}/rv"), "", vec![]);
    assert_eq!(code, 200);
    assert_eq!(after["data"]["a"], "1");
    assert_eq!(
        after["metadata"]["resourceVersion"],
        cm["metadata"]["resourceVersion"]
    );
    let (_, list) = c.send("GET", CMS, "", vec![]);
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["rv", "warned"],
        "only the accepted objects exist"
    );
}

#[test]
fn requests_without_credentials_get_401() {
    let srv = TestServer::start();
    let (ca, _, _) = srv.pems();
    let anon = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .build()
        .unwrap();
    for path in ["/api/v1/namespaces", "/version", "/healthz", "/apis"] {
        let r = anon.get(format!("{}{path}", srv.url())).send().unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
        let v: Value = r.json().unwrap();
        assert_eq!(v["reason"], "Unauthorized");
    }
    // A certificate from another CA does not get in either.
    let other = tempfile::tempdir().unwrap();
    let foreign =
        rkube_apiserver::pki::Pki::load_or_create(other.path(), &["localhost".into()]).unwrap();
    let identity = reqwest::Identity::from_pem(
        format!("{}{}", foreign.admin.cert_pem, foreign.admin.key_pem).as_bytes(),
    )
    .unwrap();
    let intruder = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .identity(identity)
        .build()
        .unwrap();
    let refused = intruder
        .get(format!("{}/api/v1/namespaces", srv.url()))
        .send();
    assert!(
        refused.is_err() || refused.unwrap().status().as_u16() == 401,
        "a foreign client certificate is refused"
    );
}

#[test]
fn health_version_and_metrics() {
    let srv = TestServer::start();
    let c = Client::new(&srv);
    let (code, v) = c.send("GET", "/version", "", vec![]);
    assert_eq!(code, 200);
    assert_eq!(
        (v["major"].as_str(), v["minor"].as_str()),
        (Some("1"), Some("33"))
    );
    for p in ["/livez", "/readyz", "/healthz"] {
        let (code, body) = c.send("GET", p, "", vec![]);
        assert_eq!((code, body), (200, Value::String("ok".into())), "{p}");
        let (code, body) = c.send("GET", &format!("{p}?verbose"), "", vec![]);
        assert_eq!(code, 200);
        let text = body.as_str().unwrap().to_string();
        assert!(
            text.contains("[+]etcd ok") && text.contains("check passed"),
            "{text}"
        );
    }
    c.send("GET", CMS, "", vec![]);
    let (_, m) = c.send("GET", "/metrics", "", vec![]);
    let m = m.as_str().unwrap().to_string();
    assert!(
        m.contains(r#"apiserver_request_total{code="200",resource="configmaps",verb="LIST"}"#),
        "{m}"
    );
    assert!(
        m.contains("apiserver_request_duration_seconds_bucket"),
        "{m}"
    );
    assert!(
        m.contains("rkube_store_request_duration_seconds_bucket{operation=\"range\""),
        "{m}"
    );
}
