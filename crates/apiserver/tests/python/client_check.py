"""The official Python client against an rkube server: CRUD, list paging and watch.

Usage: client_check.py KUBECONFIG. Exits non-zero (with a traceback) on any failure.
"""
import sys
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
apps = client.AppsV1Api()
ns = "pyclient"

v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))

# CRUD
cm = v1.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c", labels={"a": "b"}), data={"k": "v"}))
assert cm.metadata.uid and cm.metadata.resource_version, cm
got = v1.read_namespaced_config_map("c", ns)
assert got.data == {"k": "v"}, got.data
got.data["k"] = "v2"
upd = v1.replace_namespaced_config_map("c", ns, got)
assert int(upd.metadata.resource_version) > int(cm.metadata.resource_version)
v1.patch_namespaced_config_map("c", ns, {"data": {"p": "1"}})
assert v1.read_namespaced_config_map("c", ns).data == {"k": "v2", "p": "1"}
try:
    v1.replace_namespaced_config_map("c", ns, cm)  # stale resourceVersion
    raise AssertionError("a stale update must fail")
except ApiException as e:
    assert e.status == 409, e
dep = apps.create_namespaced_deployment(ns, {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
    "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "d"}},
             "template": {"metadata": {"labels": {"app": "d"}},
                          "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}})
assert dep.spec.strategy.type == "RollingUpdate"
# Statuses start as upstream's zero values, not null: clients read into them.
assert dep.status is not None and dep.status.replicas is None, dep.status
svc = v1.create_namespaced_service(ns, client.V1Service(
    metadata=client.V1ObjectMeta(name="s"),
    spec=client.V1ServiceSpec(ports=[client.V1ServicePort(port=80)])))
assert svc.status.load_balancer is not None, svc.status
assert v1.read_namespaced_service("s", ns).status.load_balancer.ingress is None
# Error bodies are upstream's, byte for byte.
try:
    v1.create_namespaced_service(ns, client.V1Service(metadata=client.V1ObjectMeta(name="s"),
        spec=client.V1ServiceSpec(ports=[client.V1ServicePort(port=80)])))
    raise AssertionError("a second create must fail")
except ApiException as e:
    assert e.status == 409, e
    assert e.body == ('{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
                      '"message":"services \\"s\\" already exists","reason":"AlreadyExists",'
                      '"details":{"name":"s","kind":"services"},"code":409}\n'), repr(e.body)
apps.patch_namespaced_deployment_scale("d", ns, {"spec": {"replicas": 3}})
assert apps.read_namespaced_deployment("d", ns).spec.replicas == 3
v1.delete_namespaced_config_map("c", ns)
try:
    v1.read_namespaced_config_map("c", ns)
    raise AssertionError("deleted")
except ApiException as e:
    assert e.status == 404

# List paging
for i in range(25):
    v1.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"page-{i:02d}")))
names, token, pages = [], None, 0
while True:
    page = v1.list_namespaced_config_map(ns, limit=10, _continue=token)
    pages += 1
    names += [i.metadata.name for i in page.items]
    token = page.metadata._continue
    if not token:
        break
assert pages == 3 and len(names) == 25 and names == sorted(names), (pages, names)
sel = v1.list_namespaced_config_map(ns, field_selector="metadata.name=page-07")
assert [i.metadata.name for i in sel.items] == ["page-07"]

# Watch
rv = v1.list_namespaced_config_map(ns).metadata.resource_version
seen = []


def watcher():
    w = watch.Watch()
    for ev in w.stream(v1.list_namespaced_config_map, ns, resource_version=rv, timeout_seconds=10):
        seen.append((ev["type"], ev["object"].metadata.name))
        if ev["type"] == "DELETED":
            w.stop()


t = threading.Thread(target=watcher)
t.start()
time.sleep(1)
v1.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="watched")))
v1.patch_namespaced_config_map("watched", ns, {"data": {"x": "y"}})
v1.delete_namespaced_config_map("watched", ns)
t.join(15)
assert seen == [("ADDED", "watched"), ("MODIFIED", "watched"), ("DELETED", "watched")], seen
print("python client: ok")
