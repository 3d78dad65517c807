//! Real kubectl against a fresh server: the everyday commands and their output.

mod common;

use std::io::BufRead;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use common::TestServer;

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: shop
  labels: {tier: web}
data:
  color: blue
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: busybox:1.36
        ports:
        - containerPort: 8080
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - port: 80
    targetPort: 8080
"#;

#[test]
fn kubectl_everyday_commands() {
    let srv = TestServer::start();
    let k = kubectl_or_skip!(srv);

    // Version and discovery.
    let v = k.ok(&["version", "-o", "json"]);
    assert!(v.contains("\"minor\": \"33\""), "{v}");
    let ar = k.ok(&["api-resources"]);
    for line in [
        "deployments",
        "deploy",
        "apps/v1",
        "pods",
        "po",
        "leases",
        "coordination.k8s.io/v1",
    ] {
        assert!(ar.contains(line), "api-resources lacks {line}: {ar}");
    }
    let av = k.ok(&["api-versions"]);
    assert!(
        av.contains("apps/v1") && av.contains("v1\n") && av.contains("batch/v1"),
        "{av}"
    );
    let ns = k.ok(&["get", "namespaces", "-o", "name"]);
    for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(ns.contains(&format!("namespace/{n}")), "{ns}");
    }

    // apply a multi-document manifest, then again with a change.
    let out = k.ok_with(&["apply", "-f", "-"], Some(MANIFEST));
    for l in [
        "namespace/shop created",
        "configmap/settings created",
        "deployment.apps/web created",
        "service/web created",
    ] {
        assert!(out.contains(l), "{out}");
    }
    let again = k.ok_with(&["apply", "-f", "-"], Some(MANIFEST));
    assert!(again.contains("deployment.apps/web unchanged"), "{again}");
    let changed = MANIFEST
        .replace("replicas: 2", "replicas: 3")
        .replace("color: blue", "color: red");
    let out = k.ok_with(&["apply", "-f", "-"], Some(&changed));
    assert!(
        out.contains("deployment.apps/web configured")
            && out.contains("configmap/settings configured"),
        "{out}"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.replicas}/{.metadata.generation}"
        ]),
        "3/2"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "cm",
            "settings",
            "-n",
            "shop",
            "-o",
            "jsonpath={.data.color}"
        ]),
        "red"
    );

    // get: table columns, wide, yaml, jsonpath, selectors, chunking.
    let deploy = k.ok(&["get", "deploy", "-n", "shop"]);
    assert!(
        deploy.starts_with("NAME   READY   UP-TO-DATE   AVAILABLE   AGE"),
        "{deploy}"
    );
    let wide = k.ok(&["get", "deploy", "-n", "shop", "-o", "wide"]);
    assert!(
        wide.contains("CONTAINERS") && wide.contains("busybox:1.36") && wide.contains("app=web"),
        "{wide}"
    );
    let svc = k.ok(&["get", "svc", "web", "-n", "shop"]);
    assert!(svc.contains("NodePort") && svc.contains("80:3"), "{svc}");
    let yaml = k.ok(&["get", "svc", "web", "-n", "shop", "-o", "yaml"]);
    assert!(
        yaml.contains("clusterIP: 10.43.") && yaml.contains("nodePort: 3"),
        "{yaml}"
    );
    let pods_cols = k.ok(&[
        "run",
        "p1",
        "-n",
        "shop",
        "--image=busybox",
        "--labels=app=web,role=x",
        "--",
        "sleep",
        "1",
    ]);
    assert!(pods_cols.contains("pod/p1 created"), "{pods_cols}");
    let pods = k.ok(&["get", "pods", "-n", "shop", "-o", "wide"]);
    assert!(pods.starts_with("NAME   READY   STATUS    RESTARTS   AGE   IP       NODE     NOMINATED NODE   READINESS GATES"), "{pods}");
    assert!(pods.contains("p1     0/1     Pending"), "{pods}");
    assert_eq!(
        k.ok(&["get", "pods", "-n", "shop", "-l", "role=x", "-o", "name"])
            .trim(),
        "pod/p1"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "pods",
            "-n",
            "shop",
            "-l",
            "role in (y,z)",
            "-o",
            "name"
        ])
        .trim(),
        ""
    );
    assert_eq!(
        k.ok(&[
            "get",
            "pods",
            "-A",
            "--field-selector",
            "status.phase=Pending",
            "-o",
            "name"
        ])
        .trim(),
        "pod/p1"
    );
    assert_eq!(
        k.ok(&[
            "get",
            "pods",
            "-A",
            "--field-selector",
            "spec.nodeName=n1",
            "-o",
            "name"
        ])
        .trim(),
        ""
    );
    for i in 0..7 {
        k.ok(&[
            "create",
            "configmap",
            &format!("c{i}"),
            "-n",
            "shop",
            "--from-literal=k=v",
        ]);
    }
    let chunked = k.ok(&["get", "cm", "-n", "shop", "--chunk-size=3", "-o", "name"]);
    assert_eq!(
        chunked
            .lines()
            .filter(|l| l.starts_with("configmap/c"))
            .count(),
        7,
        "{chunked}"
    );

    // describe, label, annotate, patch (all three types), scale.
    let d = k.ok(&["describe", "deploy", "web", "-n", "shop"]);
    assert!(
        d.contains("Replicas:") && d.contains("3 desired") && d.contains("RollingUpdate"),
        "{d}"
    );
    k.ok(&["label", "cm", "c0", "-n", "shop", "team=a"]);
    k.ok(&["annotate", "cm", "c0", "-n", "shop", "note=hello"]);
    assert_eq!(
        k.ok(&[
            "get",
            "cm",
            "-n",
            "shop",
            "-l",
            "team=a",
            "-o",
            "jsonpath={.items[*].metadata.annotations.note}"
        ]),
        "hello"
    );
    k.ok(&[
        "patch",
        "cm",
        "c0",
        "-n",
        "shop",
        "-p",
        r#"{"data":{"s":"1"}}"#,
    ]);
    k.ok(&[
        "patch",
        "cm",
        "c0",
        "-n",
        "shop",
        "--type=merge",
        "-p",
        r#"{"data":{"m":"2","k":null}}"#,
    ]);
    k.ok(&[
        "patch",
        "cm",
        "c0",
        "-n",
        "shop",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/data/j","value":"3"}]"#,
    ]);
    assert_eq!(
        k.ok(&["get", "cm", "c0", "-n", "shop", "-o", "jsonpath={.data}"]),
        r#"{"j":"3","m":"2","s":"1"}"#
    );
    k.ok(&[
        "patch",
        "deploy",
        "web",
        "-n",
        "shop",
        "-p",
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"busybox:1.37"}]}}}}"#,
    ]);
    assert_eq!(k.ok(&["get", "deploy", "web", "-n", "shop", "-o", "jsonpath={.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].ports[0].containerPort}"]), "busybox:1.37 8080");
    k.ok(&["scale", "deploy", "web", "-n", "shop", "--replicas=5"]);
    assert_eq!(
        k.ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "5"
    );

    // get -w sees a change live.
    let mut watch = k.spawn(&["get", "cm", "-n", "shop", "-w", "-o", "name"]);
    let lines = lines_of(watch.stdout.take().unwrap());
    wait_for_line(&lines, "configmap/c6", Duration::from_secs(20));
    k.ok(&["create", "configmap", "live", "-n", "shop"]);
    wait_for_line(&lines, "configmap/live", Duration::from_secs(20));
    k.ok(&["delete", "configmap", "live", "-n", "shop"]);
    let _ = watch.kill();
    let _ = watch.wait();

    // wait, diff, server-side dry run, explain.
    k.ok(&[
        "wait",
        "--for=jsonpath={.spec.replicas}=5",
        "deploy/web",
        "-n",
        "shop",
        "--timeout=10s",
    ]);
    let diff = k.run(
        &["diff", "-f", "-"],
        Some(&changed.replace("replicas: 3", "replicas: 4")),
    );
    assert_eq!(
        diff.status.code(),
        Some(1),
        "kubectl diff exits 1 when there are differences"
    );
    let diff_out = String::from_utf8_lossy(&diff.stdout);
    assert!(diff_out.contains("+  replicas: 4"), "{diff_out}");
    k.ok(&[
        "create",
        "configmap",
        "dry",
        "-n",
        "shop",
        "--dry-run=server",
    ]);
    assert!(k
        .fails(&["get", "cm", "dry", "-n", "shop"])
        .contains("not found"));
    let explain = k.ok(&["explain", "deployment.spec.strategy"]);
    assert!(
        explain.contains("DeploymentStrategy") || explain.contains("rollingUpdate"),
        "{explain}"
    );

    // delete: by name, by label, all, with grace period and cascade.
    k.ok(&["delete", "cm", "c1", "-n", "shop"]);
    k.ok(&["delete", "cm", "-n", "shop", "-l", "team=a"]);
    assert!(k
        .fails(&["get", "cm", "c0", "-n", "shop"])
        .contains("not found"));
    k.ok(&[
        "delete",
        "pod",
        "p1",
        "-n",
        "shop",
        "--grace-period=0",
        "--force",
    ]);
    k.ok(&["delete", "svc", "web", "-n", "shop", "--cascade=background"]);
    k.ok(&["delete", "cm", "--all", "-n", "shop"]);
    assert_eq!(k.ok(&["get", "cm", "-n", "shop", "-o", "name"]).trim(), "");
    let orphan = k.ok(&[
        "delete",
        "deploy",
        "web",
        "-n",
        "shop",
        "--cascade=orphan",
        "--wait=false",
    ]);
    assert!(orphan.contains("deleted"), "{orphan}");

    // A deleted namespace is Terminating (the namespace controller finishes it) and
    // takes no new objects.
    k.ok(&["delete", "namespace", "shop", "--wait=false"]);
    assert_eq!(
        k.ok(&["get", "ns", "shop", "-o", "jsonpath={.status.phase}"]),
        "Terminating"
    );
    let refused = k.fails(&["create", "configmap", "late", "-n", "shop"]);
    assert!(
        refused.contains("because it is being terminated"),
        "{refused}"
    );
}

#[test]
fn an_old_kubectl_works_too() {
    let srv = TestServer::start();
    let Some(bin) = rkube_testkit::kubectl_version_binary(27) else {
        eprintln!("SKIPPED: kubectl 1.27 is not installed");
        return;
    };
    let k = rkube_testkit::Kubectl::with_binary(bin, &srv.kubeconfig);
    let out = k.ok_with(&["apply", "-f", "-"], Some(MANIFEST));
    assert!(out.contains("deployment.apps/web created"), "{out}");
    let again = k.ok_with(
        &["apply", "-f", "-"],
        Some(&MANIFEST.replace("replicas: 2", "replicas: 4")),
    );
    assert!(again.contains("deployment.apps/web configured"), "{again}");
    assert_eq!(
        k.ok(&[
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.replicas}"
        ]),
        "4"
    );
    let t = k.ok(&["get", "svc", "-n", "shop"]);
    assert!(t.contains("NodePort"), "{t}");
    k.ok(&[
        "create",
        "configmap",
        "old",
        "-n",
        "shop",
        "--from-literal=a=b",
    ]);
    k.ok(&["delete", "configmap", "old", "-n", "shop"]);
}

#[test]
fn server_side_apply_tracks_field_owners() {
    let srv = TestServer::start();
    let k = kubectl_or_skip!(srv);
    let cm = |data: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: owned\n  namespace: default\ndata:\n{data}")
    };
    let out = k.ok_with(
        &["apply", "--server-side", "-f", "-"],
        Some(&cm("  a: \"1\"\n  b: \"1\"\n")),
    );
    assert!(out.contains("configmap/owned serverside-applied"), "{out}");
    // Another manager changing a field kubectl owns is a conflict...
    let other = ["apply", "--server-side", "--field-manager=ops", "-f", "-"];
    let r = k.run(&other, Some(&cm("  a: \"2\"\n")));
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("conflict with \"kubectl\"") && err.contains(".data.a"),
        "{err}"
    );
    // ...until forced, which moves the field to it.
    let forced = [
        "apply",
        "--server-side",
        "--field-manager=ops",
        "--force-conflicts",
        "-f",
        "-",
    ];
    k.ok_with(&forced, Some(&cm("  a: \"2\"\n")));
    let managed = k.ok(&["get", "cm", "owned", "-o", "yaml", "--show-managed-fields"]);
    assert!(
        managed.contains("manager: ops") && managed.contains("operation: Apply"),
        "{managed}"
    );
    assert!(managed.contains("f:a: {}"), "{managed}");
    // kubectl drops both fields from its configuration: b goes, a stays with ops.
    k.ok_with(
        &["apply", "--server-side", "-f", "-"],
        Some(&cm("  c: \"1\"\n")),
    );
    assert_eq!(
        k.ok(&["get", "cm", "owned", "-o", "jsonpath={.data}"]),
        r#"{"a":"2","c":"1"}"#
    );
    // An ordinary edit takes the field over from the applier.
    k.ok(&[
        "patch",
        "cm",
        "owned",
        "--type=merge",
        "-p",
        r#"{"data":{"c":"9"}}"#,
    ]);
    let r = k.run(
        &["apply", "--server-side", "-f", "-"],
        Some(&cm("  c: \"1\"\n")),
    );
    assert!(!r.status.success(), "the patch's manager now owns data.c");
    assert!(String::from_utf8_lossy(&r.stderr).contains("kubectl-patch"));
}

/// The lines a child writes, as they come.
fn lines_of(out: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_for_line(rx: &Receiver<String>, want: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if l.trim() == want => return,
            Ok(l) => seen.push(l),
            Err(_) => break,
        }
    }
    panic!("kubectl get -w did not print {want:?}; it printed {seen:?}");
}
