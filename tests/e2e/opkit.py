"""What the operator's end-to-end tests share: the operator as a real process, a small API
reader, and waiting for a condition (with the last value seen in the failure message)."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from controlplane.cluster import ControlPlane, free_port

T = TypeVar("T")


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 30.0, every: float = 0.1) -> T:
    """Poll `fn` until it returns something truthy; fail with `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; last seen: {last!r}")


class Api:
    """GETs against the apiserver with the admin token (faster than a kubectl per poll)."""

    def __init__(self, cluster: ControlPlane) -> None:
        self.server = cluster.server
        self.token = cluster.token
        self.ctx = ssl.create_default_context(cafile=str(cluster.ca_file))

    def get(self, path: str) -> dict[str, Any] | None:
        req = urllib.request.Request(
            self.server + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def conn(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.get(f"/apis/llmconn.dev/v1alpha1/namespaces/{namespace}/llmconnections/{name}")

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        obj = self.conn(namespace, name) or {}
        return obj.get("status") or {}

    def events(self, namespace: str) -> list[dict[str, Any]]:
        return (self.get(f"/api/v1/namespaces/{namespace}/events") or {}).get("items", [])


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == type_), {})


class OperatorProcess:
    """`llmconn run` as its own process against the test cluster, logging to a file."""

    def __init__(
        self,
        cluster: ControlPlane,
        log_dir: Path,
        *args: str,
        kubeconfig: Path | None = None,
        env: dict[str, str] | None = None,
        name: str = "operator",
    ) -> None:
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.host = "127.0.0.1"  # where its ports are reached (--listen-address)
        self.args: Sequence[str] = args or ("-A",)
        self.log_path = log_dir / f"{name}-{self.metrics_port}.log"
        # The tests' connections validate every second, the CRD's least interval: the
        # operator's floor (--min-interval, 5s by default) is lowered to it, and each test
        # namespace's status writes are not budgeted (the soak's 50 connections every 3 s
        # write 17 a second), unless a test sets its own (the budget's own tests do).
        self.env = {
            "LLMCONN_MIN_INTERVAL": "1s",
            "LLMCONN_NAMESPACE_WRITE_RATE": "0",
            **cluster.env(),
            **(env or {}),
        }
        if kubeconfig is not None:
            self.env["KUBECONFIG"] = str(kubeconfig)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        cmd = [
            sys.executable,
            "-m",
            "llmconn",
            "run",
            *self.args,
            "--metrics-port",
            str(self.metrics_port),
            "--health-port",
            str(self.health_port),
            "--log-level",
            "debug",
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        wait_for("the operator's health endpoint", self.healthy, timeout=60)
        return self

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(
                f"operator exited with {self.proc.returncode}:\n{self.log()[-3000:]}"
            )
        try:
            with urllib.request.urlopen(
                f"http://{self.host}:{self.health_port}/healthz", timeout=2
            ):
                return True
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def metrics(self) -> str:
        with urllib.request.urlopen(
            f"http://{self.host}:{self.metrics_port}/metrics", timeout=5
        ) as r:
            return r.read().decode()

    def validations(self) -> int:
        """llmconn_validations_total summed over every label set."""
        from prometheus_client.parser import text_string_to_metric_families

        return int(
            sum(
                s.value
                for fam in text_string_to_metric_families(self.metrics())
                if fam.name == "llmconn_validations"
                for s in fam.samples
                if s.name == "llmconn_validations_total"
            )
        )


def manifest(
    namespace: str, name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None
) -> str:
    obj = {
        "apiVersion": "llmconn.dev/v1alpha1",
        "kind": "LLMConnection",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
        "spec": spec,
    }
    return json.dumps(obj)


def secret(namespace: str, name: str, data: dict[str, str]) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "stringData": data,
        }
    )


def secret_parts(key: str) -> list[str]:
    """Every 12-character piece of a test key's random part (after its last "-", or the whole
    value when that is shorter: a token, a JWT's signature, a line of a PEM key): redaction
    removes any run of 12 or more characters of a secret, so none may appear anywhere."""
    tail = key.rsplit("-", 1)[-1]
    if len(tail) < 12:
        tail = key
    return [tail[i : i + 12] for i in range(len(tail) - 11)]


def leaked(keys: Sequence[str], text: str) -> list[str]:
    """The keys of which `text` holds the whole or a piece (named by their prefix, or their
    first four characters, only)."""
    return [
        _named(key)
        for key in keys
        if key in text or any(part in text for part in secret_parts(key))
    ]


def _named(key: str) -> str:
    head = key.rsplit("-", 1)[0] if "-" in key else ""
    return (head if 0 < len(head) <= 16 and head != key else key[:4]) + "-..."


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


class ControlledProvider:
    """An OpenAI-style provider whose behaviour a test changes while the operator runs.

    Answers GET /v1/models and /v1/models/{id} in OpenAI's dialect; `mode` switches between a
    healthy answer, 503, and 429 with Retry-After; `delay` slows every answer down."""

    def __init__(self, keys: set[str], models: Sequence[str] = ("gpt-4o",)) -> None:
        self.keys = set(keys)
        self.models = list(models)
        self.mode = "ok"
        self.retry_after = 3
        self.delay = 0.0
        self.hits: list[tuple[float, str]] = []  # (time, model path) of each authorised request

    def app(self) -> Any:
        import asyncio

        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        def error(
            status: int, code: str, message: str, headers: dict[str, str] | None = None
        ) -> Any:
            body = {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": code,
                }
            }
            return JSONResponse(body, status_code=status, headers=headers)

        async def handle(request: Any) -> Any:
            if self.delay:
                await asyncio.sleep(self.delay)
            auth = request.headers.get("authorization", "")
            if auth.removeprefix("Bearer ") not in self.keys:
                return error(401, "invalid_api_key", "Incorrect API key provided.")
            self.hits.append((time.monotonic(), request.url.path))
            if self.mode == "unavailable":
                return error(503, "server_error", "The server is overloaded.")
            if self.mode == "ratelimit":
                return error(
                    429,
                    "rate_limit_exceeded",
                    "Rate limit reached.",
                    {"retry-after": str(self.retry_after)},
                )
            model = request.path_params.get("model")
            if model is None:
                data = [{"id": m, "object": "model", "owned_by": "test"} for m in self.models]
                return JSONResponse(
                    {"object": "list", "data": data}, headers={"x-request-id": "req-1"}
                )
            if model not in self.models:
                return error(404, "model_not_found", f"The model `{model}` does not exist.")
            return JSONResponse({"id": model, "object": "model", "owned_by": "test"})

        return Starlette(
            routes=[Route("/v1/models", handle), Route("/v1/models/{model:path}", handle)]
        )

    def count(self, since: float = 0.0) -> int:
        return sum(1 for t, _ in self.hits if t >= since)
