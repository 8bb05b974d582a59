"""Helm post-renderer of the front-door tests: the test node's plumbing, added to the chart's
operator pods at install time so that the chart itself stays as users get it.

The test node has no pod network, no DNS and no Service proxy, and talks over loopback only.
So the operator pods (Deployment or StatefulSet) get:

- the host's network (`hostNetwork`), where 127.0.0.1 is the machine's loopback: the API
  server's forwarder and the test's providers are there;
- `kubernetes.default.svc` (the name Kopf logs in to from a pod) on 127.0.0.1, through
  hostAliases; the test runs a forwarder from 127.0.0.1:443 to the API server;
- their probes on 127.0.0.1: the kubelet would otherwise probe the pod's IP, which in the
  host's network is the machine's own non-loopback address.

With `--own-ports` (two or more operator pods on the one node), every pod would bind the same
metrics and health ports in the one network: each picks free ports of its own at start (the
chart's arguments, then its own `--metrics-port` and `--health-port`, which win), writes the
health port to /tmp, and its probes ask that port from inside the container with the chart's
path, timing and thresholds.

Reads the rendered manifests on stdin, writes them to stdout.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

API_NAME = "kubernetes.default.svc"
HEALTH_PORT_FILE = "/tmp/llmconn-health-port"
# Backticks, not $(...): the kubelet expands $(NAME) in commands itself.
OWN_PORTS = (
    "ports=`python -c 'import socket\n"
    "socks = [socket.socket() for _ in range(2)]\n"
    'for s in socks: s.bind(("127.0.0.1", 0))\n'
    "print(*(s.getsockname()[1] for s in socks))'`\n"
    f'echo "${{ports#* }}" > {HEALTH_PORT_FILE}\n'
    'exec llmconn run "$@" --metrics-port="${ports% *}" --health-port="${ports#* }"\n'
)
PROBE = (
    "import urllib.request\n"
    f"port = open({HEALTH_PORT_FILE!r}).read().strip()\n"
    "urllib.request.urlopen('http://127.0.0.1:' + port + '/healthz', timeout=4).read()\n"
)


def plumb(doc: dict[str, Any], own_ports: bool) -> None:
    if doc.get("kind") not in ("Deployment", "StatefulSet"):
        return
    pod = doc["spec"]["template"]["spec"]
    pod["hostNetwork"] = True
    pod["dnsPolicy"] = "Default"
    pod["hostAliases"] = [{"ip": "127.0.0.1", "hostnames": [API_NAME]}]
    for container in pod["containers"]:
        for probe in ("livenessProbe", "readinessProbe"):
            spec = container.get(probe)
            if not spec:
                continue
            if own_ports:
                get = spec.pop("httpGet")
                assert get["path"] == "/healthz", get
                spec["exec"] = {"command": ["python", "-c", PROBE]}
            else:
                spec["httpGet"]["host"] = "127.0.0.1"
        if own_ports:
            container["command"] = ["sh", "-c", OWN_PORTS, "llmconn"]
            container.pop("ports", None)


def main(argv: list[str]) -> int:
    own_ports = "--own-ports" in argv
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    for doc in docs:
        plumb(doc, own_ports)
    sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
