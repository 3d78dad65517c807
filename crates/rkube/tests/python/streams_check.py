"""The official Python client's streams against an rkube node: exec with stdin written as
text frames (its default for `str`), closing stdin over v5 and the exit code; and
port-forward through the API with `ports=` to busybox httpd in the pod.

Usage: streams_check.py KUBECONFIG POD. Exits non-zero (with a traceback) on failure.
"""
import signal
import sys
import time

from kubernetes import client, config
from kubernetes.stream import portforward, stream

# A client that never hears back must fail, not hang: the whole check gets 120 s.
signal.alarm(120)
config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
pod, ns = sys.argv[2], "default"

# exec: str stdin goes out as WebSocket text frames.
resp = stream(v1.connect_get_namespaced_pod_exec, pod, ns, container="web",
              command=["sh", "-c", "read line; echo got:$line; cat; exit 3"],
              stdin=True, stdout=True, stderr=True, tty=False, _preload_content=False)
resp.write_stdin("hello\n")
out = ""
deadline = time.time() + 20
while "got:hello" not in out and time.time() < deadline:
    resp.update(timeout=1)
    out += resp.read_stdout() or ""
assert "got:hello" in out, repr(out)
resp.write_stdin("more text\n")
# Closing stdin (v5) ends `cat`; the shell exits 3.
resp.close_channel(0)
deadline = time.time() + 20
while resp.is_open() and time.time() < deadline:
    resp.update(timeout=1)
    out += resp.read_stdout() or ""
assert "more text" in out, repr(out)
assert not resp.is_open(), "the exec session did not end after stdin was closed"
assert resp.returncode == 3, resp.returncode

# port-forward with ports= through the API to httpd on 8080.
pf = portforward(v1.connect_get_namespaced_pod_portforward, pod, ns, ports="8080")
sock = pf.socket(8080)
sock.setblocking(True)
sock.settimeout(20)
sock.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
data = b""
while True:
    chunk = sock.recv(4096)
    if not chunk:
        break
    data += chunk
sock.close()
assert b"200 OK" in data and b"hello-pf" in data, data
assert pf.error(8080) is None, pf.error(8080)
pf.close()
print("python streams: ok")
