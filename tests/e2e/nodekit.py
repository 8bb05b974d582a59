"""What the front-door tests share: the chart installed by real helm on the test node, the
plumbing the node's pods need (a forwarder for `kubernetes.default.svc:443`, the Helm
post-renderer in node_postrender.py), and a watch on the node's TCP connections.

The chart is installed unchanged: values a user could pass (the image built by `make image`,
loopback providers allowed, free ports) and the post-renderer's test plumbing only.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from chartkit import CHART, HELM
from controlplane.cluster import ControlPlane

HERE = Path(__file__).resolve().parent
POST_RENDERER = HERE / "node_postrender.py"
API_FORWARD_PORT = 443  # Kopf logs in to https://kubernetes.default.svc, port 443


class Forwarder:
    """Forwards TCP connections from 127.0.0.1:`port` to 127.0.0.1:`target`, in a thread."""

    def __init__(self, port: int, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.listener.setblocking(False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.peers: dict[socket.socket, socket.socket] = {}
        self.closing = False
        self.thread = threading.Thread(target=self._run, daemon=True, name="api-forwarder")
        self.thread.start()

    def _run(self) -> None:
        while not self.closing:
            for key, _ in self.selector.select(timeout=0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self.listener:
                    with contextlib.suppress(BlockingIOError):
                        client, _ = self.listener.accept()
                        try:
                            upstream = socket.create_connection(("127.0.0.1", self.target), 5)
                        except OSError:
                            client.close()
                            continue
                        for a, b in ((client, upstream), (upstream, client)):
                            a.setblocking(False)
                            self.peers[a] = b
                            self.selector.register(a, selectors.EVENT_READ)
                    continue
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                peer = self.peers.get(sock)
                if data and peer is not None:
                    with contextlib.suppress(OSError):
                        peer.setblocking(True)
                        peer.sendall(data)
                        peer.setblocking(False)
                        continue
                self._close(sock)
        for sock in list(self.peers):
            self._close(sock)
        self.selector.unregister(self.listener)
        self.listener.close()

    def _close(self, sock: socket.socket) -> None:
        for s in (sock, self.peers.pop(sock, None)):
            if s is None:
                continue
            self.peers.pop(s, None)
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(s)
            s.close()

    def close(self) -> None:
        self.closing = True
        self.thread.join(timeout=5)


# --- no connection off loopback ---------------------------------------------------------


TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1"}


def _address(hex_address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1]), int(port, 16)
    # /proc/net/tcp6: four 32-bit words, each in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    address = ipaddress.IPv6Address(words)
    return (address.ipv4_mapped or address), int(port, 16)


@dataclass
class NetWatch:
    """Samples the TCP connections of the cluster's processes (the control plane, the node,
    their children and every container in the node's cgroups) from /proc, in a thread, and
    keeps every one whose remote end is not loopback. `loopback` counts the distinct loopback
    connections seen, so a test can tell the watch saw the node's traffic at all."""

    plane: ControlPlane
    every: float = 0.1
    off_loopback: set[str] = field(default_factory=set)
    loopback: set[tuple[str, str]] = field(default_factory=set)  # (process, connection)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> NetWatch:
        self.thread = threading.Thread(target=self._run, daemon=True, name="netwatch")
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join(timeout=5)

    def _pids(self) -> set[int]:
        roots = set(self.plane.pids().values())
        parents: dict[int, int] = {}
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = (proc / "stat").read_text()
                    parents[int(proc.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        ours = set(roots)
        grew = True
        while grew:
            more = {pid for pid, parent in parents.items() if parent in ours} - ours
            ours |= more
            grew = bool(more)
        # Containers: the shims reparent to init, their processes live in the node's cgroups.
        for hierarchy in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup/memory")):
            top = hierarchy / "kubepods"
            if top.is_dir():
                for folder, _, _ in os.walk(top):
                    with contextlib.suppress(OSError, ValueError):
                        ours |= {int(p) for p in Path(folder, "cgroup.procs").read_text().split()}
        return ours

    def _sockets(self, pids: set[int]) -> dict[str, int]:
        inodes = {}
        for pid in pids:
            with contextlib.suppress(OSError):
                for fd in os.scandir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        target = os.readlink(fd.path)
                        if target.startswith("socket:["):
                            inodes[target[8:-1]] = pid
        return inodes

    def _name(self, pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return "?"

    def sample(self) -> None:
        inodes = self._sockets(self._pids())
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError):
                lines = Path(table).read_text().splitlines()[1:]
                for line in lines:
                    fields = line.split()
                    local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                    if state not in TCP_STATES or inode not in inodes:
                        continue
                    (laddr, lport), (raddr, rport) = _address(local), _address(remote)
                    seen = f"{laddr}:{lport} -> {raddr}:{rport} {TCP_STATES[state]}"
                    if raddr.is_loopback:
                        self.loopback.add((self._name(inodes[inode]), seen))
                    else:
                        self.off_loopback.add(f"{self._name(inodes[inode])}: {seen}")
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every)


# --- helm --------------------------------------------------------------------------------


@dataclass
class Helm:
    """helm against the node cluster, with its caches and config in a temp dir."""

    plane: ControlPlane
    env: dict[str, str]
    tmp: Path

    def __post_init__(self) -> None:
        self.renderer = self.tmp / "post-render"
        self.renderer.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{POST_RENDERER}" "$@"\n')
        self.renderer.chmod(0o755)

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        env = {**self.env, "KUBECONFIG": str(self.plane.kubeconfig)}
        result = subprocess.run(
            [str(HELM), *args], capture_output=True, text=True, env=env, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)}:\n{result.stdout}{result.stderr}")
        return result.stdout + result.stderr

    def values_file(self, values: dict[str, Any]) -> Path:
        path = self.tmp / f"values-{len(list(self.tmp.glob('values-*')))}.yaml"
        path.write_text(yaml.safe_dump(values))
        return path

    def install(
        self,
        verb: str,
        release: str,
        namespace: str,
        values: dict[str, Any],
        *,
        own_ports: bool = False,
    ) -> str:
        """`helm install` or `helm upgrade` of charts/llmconn with the node's plumbing."""
        extra = ["--create-namespace"] if verb == "install" else []
        renderer_args = ["--post-renderer-args", "--own-ports"] if own_ports else []
        return self.run(
            verb,
            release,
            str(CHART),
            "--namespace",
            namespace,
            *extra,
            "-f",
            str(self.values_file(values)),
            "--post-renderer",
            str(self.renderer),
            *renderer_args,
        )


def status_writers(plane: ControlPlane, namespace: str, name: str) -> list[tuple[str, str, str]]:
    """(user, pod name, pod uid) of each successful status write to one connection, in order:
    a ServiceAccount token bound to a pod names the pod (the audit log's user.extra)."""
    found = []
    for event in plane.audit_events():
        ref = event.get("objectRef", {})
        if (
            ref.get("namespace") == namespace
            and ref.get("name") == name
            and ref.get("resource") == "llmconnections"
            and ref.get("subresource") == "status"
            and 200 <= event.get("responseStatus", {}).get("code", 0) < 300
        ):
            user = event.get("user", {})
            extra = user.get("extra") or {}
            pod = extra.get("authentication.kubernetes.io/pod-name", [""])[0]
            uid = extra.get("authentication.kubernetes.io/pod-uid", [""])[0]
            found.append((user.get("username", ""), pod, uid))
    return found


def rollout(plane: ControlPlane, namespace: str, kind: str, name: str) -> str:
    return plane.kubectl(
        "rollout", "status", f"{kind}/{name}", "-n", namespace, "--timeout=180s", timeout=200
    ).stdout


def pods(plane: ControlPlane, namespace: str, selector: str) -> list[dict[str, Any]]:
    out = plane.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "yaml").stdout
    items: list[dict[str, Any]] = yaml.safe_load(out)["items"]
    return items


def wait(what: str, fn: Any, timeout: float = 120.0, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; last seen: {last!r}")


# --- a provider that holds its answers -----------------------------------------------------


class GatedProvider:
    """An OpenAI-style provider (GET /v1/models and /v1/models/{id}) whose answers wait while `held` is set,
    so a test knows probes are in flight; records each answered request's model and time."""

    def __init__(self, keys: set[str], models: list[str]) -> None:
        self.keys = set(keys)
        self.models = list(models)
        self.held = threading.Event()
        self.waiting = 0
        self.answered: list[tuple[float, str]] = []

    def app(self) -> Any:
        import asyncio

        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def model(request: Any) -> Any:
            self.waiting += 1
            try:
                while self.held.is_set():
                    await asyncio.sleep(0.05)
            finally:
                self.waiting -= 1
            name = request.path_params.get("model")
            self.answered.append((time.time(), name or ""))
            if request.headers.get("authorization", "").removeprefix("Bearer ") not in self.keys:
                body = {
                    "error": {
                        "message": "Incorrect API key provided.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                }
                return JSONResponse(body, status_code=401)
            if name is None:
                data = [{"id": m, "object": "model", "owned_by": "test"} for m in self.models]
                return JSONResponse({"object": "list", "data": data})
            if name not in self.models:
                body = {
                    "error": {
                        "message": f"The model `{name}` does not exist.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "model_not_found",
                    }
                }
                return JSONResponse(body, status_code=404)
            return JSONResponse({"id": name, "object": "model", "owned_by": "test"})

        return Starlette(
            routes=[Route("/v1/models", model), Route("/v1/models/{model:path}", model)]
        )


class PodWatch:
    """`kubectl get pods --watch` in a thread: every state each pod of a selector was seen in,
    including the last one before it was deleted."""

    def __init__(self, plane: ControlPlane, namespace: str, selector: str) -> None:
        self.seen: dict[str, list[dict[str, Any]]] = {}
        self.proc = subprocess.Popen(
            [
                str(plane.bin_dir / "kubectl"),
                "get",
                "pods",
                "-n",
                namespace,
                "-l",
                selector,
                "--watch",
                "--output-watch-events",
                "-o",
                "json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=plane.env(),
        )
        self.thread = threading.Thread(target=self._read, daemon=True, name="podwatch")
        self.thread.start()

    def _read(self) -> None:
        import json

        decoder = json.JSONDecoder()
        buffer = ""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            buffer += line
            while buffer.strip():
                try:
                    event, end = decoder.raw_decode(buffer.lstrip())
                except ValueError:
                    break
                buffer = buffer.lstrip()[end:]
                pod = event.get("object", {})
                name = pod.get("metadata", {}).get("name", "")
                self.seen.setdefault(name, []).append(pod)

    def last(self, name: str) -> dict[str, Any]:
        return self.seen.get(name, [{}])[-1]

    def terminations(self, name: str) -> list[dict[str, Any]]:
        """The `terminated` states reported for the pod's containers."""
        return [
            status["state"]["terminated"]
            for pod in self.seen.get(name, [])
            for status in pod.get("status", {}).get("containerStatuses") or []
            if "terminated" in status.get("state", {})
        ]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.thread.join(timeout=5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
