//! The admission chain and the resources' hooks through the real API: the default
//! plugins answer as upstream's, a plugin disabled by configuration no longer does, and
//! Service allocations survive dry runs and failed writes.

mod common;

use common::{assert_status as status, RawClient as Client, TestServer};
use rkube_apiserver::AdmissionConfig;
use serde_json::{json, Value};

/// Creates namespace `ns` and starts deleting it: with no namespace controller running,
/// its `kubernetes` finalizer keeps it Terminating.
fn terminating_namespace(c: &Client, ns: &str) {
    let (code, v) = c.json(
        "POST",
        "/api/v1/namespaces",
        &json!({"metadata": {"name": ns}}),
    );
    assert_eq!(code, 201, "{v}");
    let (code, v) = c.send(
        "DELETE",
        &format!("/api/v1/namespaces/{ns}"),
        "",
        Vec::new(),
    );
    assert_eq!(code, 200, "{v}");
    let (_, v) = c.get(&format!("/api/v1/namespaces/{ns}"));
    assert_eq!(v["status"]["phase"], "Terminating", "{v}");
}

fn cm(name: &str) -> Value {
    json!({"metadata": {"name": name}, "data": {"k": "v"}})
}

#[test]
fn admission_chain_and_hooks() {
    let srv = TestServer::start();
    let c = Client::new(&srv);
    namespace_lifecycle(&c);
    default_tolerations_and_priority(&c);
    service_allocations_settle_with_the_write(&c);

    // NamespaceLifecycle off (the flag's effect): the same create goes through.
    let off = TestServer::start_with(tempfile::tempdir().unwrap(), |config| {
        config.admission = AdmissionConfig {
            enable: vec![],
            disable: vec!["NamespaceLifecycle".into()],
        };
    });
    let c = Client::new(&off);
    terminating_namespace(&c, "gone");
    let (code, v) = c.json("POST", "/api/v1/namespaces/gone/configmaps", &cm("late"));
    assert_eq!(code, 201, "with NamespaceLifecycle disabled: {v}");
    let (code, v) = c.send("DELETE", "/api/v1/namespaces/kube-public", "", Vec::new());
    assert_eq!(code, 200, "with NamespaceLifecycle disabled: {v}");
}

fn namespace_lifecycle(c: &Client) {
    terminating_namespace(c, "gone");
    let got = c.json("POST", "/api/v1/namespaces/gone/configmaps", &cm("late"));
    assert_eq!(
        got.1["details"]["causes"][0]["reason"],
        "NamespaceTerminating"
    );
    status(
        got,
        403,
        "Forbidden",
        "configmaps \"late\" is forbidden: unable to create new content in namespace gone because it is being terminated",
    );
    status(
        c.json("POST", "/api/v1/namespaces/nowhere/configmaps", &cm("x")),
        404,
        "NotFound",
        "namespaces \"nowhere\" not found",
    );
    for ns in ["default", "kube-system", "kube-public"] {
        status(
            c.send(
                "DELETE",
                &format!("/api/v1/namespaces/{ns}"),
                "",
                Vec::new(),
            ),
            403,
            "Forbidden",
            &format!("namespaces \"{ns}\" is forbidden: this namespace may not be deleted"),
        );
    }
}

fn default_tolerations_and_priority(c: &Client) {
    let pod = json!({"metadata": {"name": "p"}, "spec": {
        "priorityClassName": "system-cluster-critical",
        "containers": [{"name": "c", "image": "busybox"}]}});
    let (code, v) = c.json("POST", "/api/v1/namespaces/default/pods", &pod);
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["spec"]["priority"], 2_000_000_000, "{v}");
    let keys: Vec<&str> = v["spec"]["tolerations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable"
        ],
        "{v}"
    );
}

/// A NodePort Service with this nodePort.
fn svc(name: &str, node_port: i64) -> Value {
    json!({"metadata": {"name": name}, "spec": {"type": "NodePort",
        "ports": [{"port": 80, "nodePort": node_port}]}})
}

const SVCS: &str = "/api/v1/namespaces/default/services";

fn service_allocations_settle_with_the_write(c: &Client) {
    let (code, v) = c.json("POST", SVCS, &svc("a", 30080));
    assert_eq!(code, 201, "{v}");
    // A dry-run update to another port neither frees the old one nor keeps the new one.
    let mut moved = v.clone();
    moved["spec"]["ports"][0]["nodePort"] = json!(30081);
    let (code, w) = c.json("PUT", &format!("{SVCS}/a?dryRun=All"), &moved);
    assert_eq!(code, 200, "{w}");
    assert_eq!(w["spec"]["ports"][0]["nodePort"], 30081, "{w}");
    status(
        c.json("POST", SVCS, &svc("b", 30080)),
        422,
        "Invalid",
        "provided port is already allocated",
    );
    let (code, w) = c.json("POST", SVCS, &svc("b", 30081));
    assert_eq!(code, 201, "the dry run kept 30081: {w}");
    // An update that fails (stale resourceVersion) keeps the old port too.
    let mut stale = v.clone();
    stale["spec"]["ports"][0]["nodePort"] = json!(30082);
    stale["metadata"]["resourceVersion"] = json!("1");
    status(
        c.json("PUT", &format!("{SVCS}/a"), &stale),
        409,
        "Conflict",
        "the object has been modified",
    );
    let (code, w) = c.json("POST", SVCS, &svc("c", 30082));
    assert_eq!(code, 201, "the failed update kept 30082: {w}");
    // A real update frees the old port; a delete frees the rest.
    let (_, cur) = c.get(&format!("{SVCS}/a"));
    let mut moved = cur.clone();
    moved["spec"]["ports"][0]["nodePort"] = json!(30083);
    let (code, w) = c.json("PUT", &format!("{SVCS}/a"), &moved);
    assert_eq!(code, 200, "{w}");
    let (code, w) = c.json("POST", SVCS, &svc("d", 30080));
    assert_eq!(code, 201, "the update freed 30080: {w}");
    let ip = cur["spec"]["clusterIP"].as_str().unwrap().to_string();
    let (code, _) = c.get(&format!("/apis/networking.k8s.io/v1/ipaddresses/{ip}"));
    assert_eq!(code, 200);
    let (code, w) = c.send("DELETE", &format!("{SVCS}/a"), "", Vec::new());
    assert_eq!(code, 200, "{w}");
    let (code, _) = c.get(&format!("/apis/networking.k8s.io/v1/ipaddresses/{ip}"));
    assert_eq!(code, 404, "the delete freed {ip}");
    let (code, w) = c.json("POST", SVCS, &svc("e", 30083));
    assert_eq!(code, 201, "the delete freed 30083: {w}");
}
