"""`make soak SOAK_ARGS=--noisy-neighbour`: one namespace attacks, another measures.

Starts its own control plane (with an audit log), two loopback providers and the operator
(its defaults, namespaced mode over both namespaces, with peering) as a separate process.
The noisy namespace then runs every attack issue 23 names, all at once, for --seconds (120):

- a vertex-ai connection whose service-account key is a 16384-bit RSA key, at interval 1s;
- a connection with 16 headersFromSecret of 16,000 bytes each;
- 33 connections, each with its own CA bundle of 1 MiB (--ca-bundle-kib);
- 30 connections at interval 1s against a provider that alternates 200 and 401, whose
  refusals carry escape sequences (a terminal clear, a bidi override, OSC 52);
- a KopfPeering in its namespace with a huge priority (--peer-priority; see below).

Meanwhile the victim namespace measures: the worst latency of /healthz (polled every
0.2 s), the time each of its new connections (one every 10 s) takes to its verdict, the
operator's peak RSS (VmHWM), and from the API server's audit log the Events and status writes
per second of the noisy namespace and the Events per flapping connection per minute.

Targets (exit 1 when one is missed): /healthz <= 1 s at worst, every victim connection judged
within 2 s, peak RSS below the chart's memory limit (384 MiB), and at most two Events per
connection at once, then one a minute.

--peer-priority: the default, 10**18, is past any replica's, which the operator removes
(Kopf would pause every namespace for it). A priority within the replicas' range (e.g.
2147483648) cannot be told from a replica's: Kopf then pauses its watches of every namespace,
so the victim's new connections are not seen while the entry lives (docs/security.md says
why tenants must not write KopfPeerings); use it to see that.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import math
import secrets
import shlex
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx2

from bench import ROOT, Proc, context, percentile, progress

sys.path.insert(0, str(ROOT / "tests"))

from controlplane.cluster import ControlPlane, free_port
from keykit import rsa_pem
from servers.serve import serve

NOISY, VICTIM = "noisy", "victim"
KEY = "sk-noisy-neighbour"
PEERING = "llmconn"
MEMORY_LIMIT_MIB = 384  # the chart's resources.limits.memory
ESCAPES = "\x1b[2J\x1b]52;c;ZXZpbA==\x07\u202eevil"
HEALTH_TARGET, VERDICT_TARGET = 1.0, 2.0


class Flapping:
    """An OpenAI-style provider that takes every other request's key: 200, 401, 200, ...
    Its refusals carry escape sequences."""

    def __init__(self) -> None:
        self.asked = 0
        self.lock = threading.Lock()

    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def handle(request: Any) -> Any:
            with self.lock:
                self.asked += 1
                good = self.asked % 2 == 0
            if not good:
                error = {"message": f"Incorrect API key {ESCAPES}", "code": "invalid_api_key"}
                return JSONResponse({"error": error}, status_code=401)
            return JSONResponse({"object": "list", "data": [{"id": "gpt-4o", "object": "model"}]})

        async def model(request: Any) -> Any:
            answer = await handle(request)
            if answer.status_code == 200:
                return JSONResponse({"id": "gpt-4o", "object": "model"})
            return answer

        return Starlette(
            routes=[Route("/v1/models", handle), Route("/v1/models/{model:path}", model)]
        )


class Healthy:
    """A provider that always answers: the victim's."""

    def app(self) -> Any:
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def handle(request: Any) -> Any:
            if request.url.path.endswith("/models"):
                return JSONResponse({"object": "list", "data": [{"id": "gpt-4o"}]})
            return JSONResponse({"id": "gpt-4o", "object": "model"})

        return Starlette(
            routes=[Route("/v1/models", handle), Route("/v1/models/{model:path}", handle)]
        )


def secret(ns: str, name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def connection(ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "llmconn.dev/v1alpha1",
        "kind": "LLMConnection",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def attacks(flap_url: str, ca_kib: int) -> list[dict[str, Any]]:
    """Every object of the noisy namespace."""
    docs: list[dict[str, Any]] = [secret(NOISY, "creds", {"apiKey": KEY})]
    key_file = {
        "type": "service_account",
        "project_id": "tenant-project",
        "private_key_id": "0123456789abcdef",
        "private_key": rsa_pem(16384),
        "client_email": "probe@tenant-project.iam.gserviceaccount.com",
        "token_uri": "http://127.0.0.1:9/token",
    }
    docs.append(secret(NOISY, "vertex-key", {"key.json": json.dumps(key_file)}))
    docs.append(
        connection(
            NOISY,
            "vertex-16384",
            {
                "provider": "vertex-ai",
                "endpoint": "http://127.0.0.1:9",
                "model": "gemini-2.5-flash",
                "apiKeySecretRef": {"name": "vertex-key", "key": "key.json"},
                "vertexAI": {"project": "tenant-project", "location": "us-central1"},
                "validation": {"interval": "1s"},
            },
        )
    )
    docs.append(secret(NOISY, "headers", {f"h{i}": "h" * 16_000 for i in range(16)}))
    docs.append(
        connection(
            NOISY,
            "headers-256k",
            {
                "provider": "openai-compatible",
                "endpoint": flap_url + "/v1",
                "model": "gpt-4o",
                "headersFromSecret": [
                    {"name": f"X-H{i}", "secretKeyRef": {"name": "headers", "key": f"h{i}"}}
                    for i in range(16)
                ],
                "validation": {"interval": "1s"},
            },
        )
    )
    for i in range(33):
        bundle = "-----BEGIN CERTIFICATE-----\n" + secrets.token_urlsafe(ca_kib * 768) + "\n"
        docs.append(secret(NOISY, f"ca-{i}", {"ca.crt": bundle[: ca_kib * 1024]}))
        docs.append(
            connection(
                NOISY,
                f"ca-{i}",
                {
                    "provider": "openai-compatible",
                    "endpoint": flap_url + "/v1",
                    "model": "gpt-4o",
                    "apiKeySecretRef": {"name": "creds"},
                    "tls": {"caBundleSecretRef": {"name": f"ca-{i}", "key": "ca.crt"}},
                    "validation": {"interval": "1s"},
                },
            )
        )
    for i in range(30):
        docs.append(
            connection(
                NOISY,
                f"flap-{i}",
                {
                    "provider": "openai-compatible",
                    "endpoint": flap_url + "/v1",
                    "model": "gpt-4o",
                    "apiKeySecretRef": {"name": "creds"},
                    "validation": {"interval": "1s", "failureThreshold": 1},
                },
            )
        )
    return docs


def peering(ns: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "kopf.dev/v1",
        "kind": "KopfPeering",
        "metadata": {"name": PEERING, "namespace": ns},
    }
    if status is not None:
        obj["status"] = status
    return obj


def apply(cp: ControlPlane, docs: list[dict[str, Any]]) -> None:
    for start in range(0, len(docs), 20):  # kubectl's input, in pieces of a few MiB at most
        batch = {"apiVersion": "v1", "kind": "List", "items": docs[start : start + 20]}
        cp.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(batch), timeout=120)


class HealthProbe(threading.Thread):
    """GET /healthz every 0.2 s; the worst latency (a failure counts as its full wait)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.latencies: list[float] = []
        self.failures = 0
        self._stop = threading.Event()

    def run(self) -> None:
        with httpx2.Client(timeout=5.0) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    ok = client.get(self.url).status_code == 200
                except httpx2.HTTPError:
                    ok = False
                self.latencies.append(time.perf_counter() - started)
                self.failures += not ok
                self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()


def stamp(event: dict[str, Any]) -> float:
    text = str(event["requestReceivedTimestamp"]).replace("Z", "+00:00")
    return dt.datetime.fromisoformat(text).timestamp()


def noisy_writes(cp: ControlPlane, since: float, until: float) -> dict[str, Any]:
    """Events and status writes of the noisy namespace in [since, until], from the audit log
    (every write, so an Event's count update would count too)."""
    events = statuses = 0
    for event in cp.audit_events():
        ref = event.get("objectRef", {})
        code = event.get("responseStatus", {}).get("code", 0)
        if ref.get("namespace") != NOISY or not 200 <= code < 300:
            continue
        if event.get("verb") not in ("create", "update", "patch"):
            continue
        if not since <= stamp(event) <= until:
            continue
        if ref.get("resource") == "events":
            events += 1
        elif ref.get("resource") == "llmconnections" and ref.get("subresource") == "status":
            statuses += 1
    seconds = max(until - since, 1e-9)
    return {
        "events": events,
        "events_per_second": events / seconds,
        "status_writes": statuses,
        "status_writes_per_second": statuses / seconds,
    }


def events_per_connection_minute(client: httpx2.Client) -> int:
    """The most Events one connection of the noisy namespace got in any minute (each Event is
    created once and never updated, so one Event is one write)."""
    items = client.get(f"/api/v1/namespaces/{NOISY}/events").json().get("items", [])
    by_object: dict[str, list[float]] = {}
    for item in items:
        when = str(item.get("lastTimestamp") or item.get("eventTime") or "")
        if not when:
            continue
        seen = dt.datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()
        by_object.setdefault(item["involvedObject"]["name"], []).append(seen)
    return max(
        (max(sum(1 for t in ts if s <= t < s + 60) for s in ts) for ts in by_object.values()),
        default=0,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="the attack's length (120)")
    ap.add_argument("--ca-bundle-kib", type=int, default=1000, help="each CA bundle (1000 KiB)")
    ap.add_argument("--peer-priority", type=int, default=10**18)
    ap.add_argument("--out", default=str(ROOT / ".local" / "bench" / "noisy.json"))
    args = ap.parse_args(argv)

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    work = Path(tempfile.mkdtemp(prefix="llmconn-noisy-"))
    cp = ControlPlane(work, bin_dir=ROOT / ".local" / "bin", audit=True)
    procs: list[Proc] = []
    health: HealthProbe | None = None
    flap = Flapping()
    try:
        progress("starting the control plane")
        cp.start()
        cp.kubectl("apply", "-f", str(ROOT / "crds" / "llmconnections.yaml"))
        crds = ROOT / "charts" / "llmconn" / "crds" / "kopf-peering.yaml"
        cp.kubectl("apply", "--server-side", "-f", str(crds))
        cp.wait_established(
            "llmconnections.llmconn.dev", "kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"
        )
        for ns in (NOISY, VICTIM):
            cp.kubectl("create", "namespace", ns)
        apply(cp, [peering(NOISY), peering(VICTIM), secret(VICTIM, "creds", {"apiKey": KEY})])
        with contextlib.ExitStack() as stack:
            flap_url = stack.enter_context(serve(flap.app()))
            good_url = stack.enter_context(serve(Healthy().app()))
            metrics_port, health_port = free_port(), free_port()
            operator = Proc(
                "operator",
                [
                    sys.executable,
                    "-m",
                    "llmconn",
                    "run",
                    "-n",
                    f"{NOISY},{VICTIM}",
                    "--peering",
                    PEERING,
                    "--listen-address",
                    "127.0.0.1",
                    "--metrics-port",
                    str(metrics_port),
                    "--health-port",
                    str(health_port),
                    "--log-level",
                    "warning",
                ],
                work,
                cp.env(),
            )
            procs.append(operator)
            health_url = f"http://127.0.0.1:{health_port}/healthz"
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx2.HTTPError):
                    if httpx2.get(health_url).status_code == 200:
                        break
                if time.monotonic() > deadline or operator.p.poll() is not None:
                    raise SystemExit(f"the operator did not start: see {operator.log}")
                time.sleep(0.2)
            health = HealthProbe(health_url)
            health.start()

            progress("the noisy namespace attacks")
            started = time.time()
            apply(cp, attacks(flap_url, args.ca_bundle_kib))
            claim = {"priority": args.peer_priority, "lifetime": 60}
            claim["lastseen"] = dt.datetime.now(dt.UTC).isoformat()  # type: ignore[assignment]
            apply(cp, [peering(NOISY, {"tenant": claim})])

            verdicts: list[float] = []
            client = httpx2.Client(
                base_url=cp.server,
                headers={"Authorization": f"Bearer {cp.token}"},
                verify=str(cp.ca_file),
            )
            n = 0
            while time.time() - started < args.seconds:
                name = f"new-{n}"
                n += 1
                spec = {
                    "provider": "openai-compatible",
                    "endpoint": good_url + "/v1",
                    "model": "gpt-4o",
                    "apiKeySecretRef": {"name": "creds"},
                }
                path = f"/apis/llmconn.dev/v1alpha1/namespaces/{VICTIM}/llmconnections"
                created = time.perf_counter()
                client.post(path, json=connection(VICTIM, name, spec)).raise_for_status()
                took = math.inf
                while time.perf_counter() - created < 30:
                    status = client.get(f"{path}/{name}").json().get("status") or {}
                    if status.get("result"):
                        took = time.perf_counter() - created
                        break
                    time.sleep(0.02)
                verdicts.append(took)
                progress(f"victim {name}: verdict after {took:.2f}s")
                time.sleep(max(0.0, 10 - (time.perf_counter() - created)))
            ended = time.time()
            health.stop()
            rss_peak = operator.high_water()
            metrics = httpx2.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        time.sleep(2)  # the audit log's last lines
        writes = noisy_writes(cp, started, ended)
        writes["worst_events_per_connection_minute"] = events_per_connection_minute(client)
        result = {
            "context": {
                **context(argv),
                "command": "make soak SOAK_ARGS="
                + shlex.quote(shlex.join(["--noisy-neighbour", *(argv or sys.argv[1:])])),
            },
            "seconds": round(ended - started, 1),
            "peer_priority": args.peer_priority,
            "health_worst_seconds": round(max(health.latencies, default=math.inf), 3),
            "health_p99_seconds": round(percentile(health.latencies, 99), 3),
            "health_failures": health.failures,
            "victim_verdict_seconds": [round(v, 3) for v in verdicts],
            "victim_verdict_worst_seconds": round(max(verdicts, default=math.inf), 3),
            "rss_peak_mib": round(rss_peak, 1),
            "flapping_provider_requests": flap.asked,
            **{k: round(v, 2) if isinstance(v, float) else v for k, v in writes.items()},
            "writes_delayed": "llmconn_status_writes_delayed_total{" in metrics,
        }
        checks = {
            f"/healthz worst <= {HEALTH_TARGET}s": result["health_worst_seconds"] <= HEALTH_TARGET
            and health.failures == 0,
            f"victim verdict <= {VERDICT_TARGET}s": result["victim_verdict_worst_seconds"]
            <= VERDICT_TARGET,
            f"RSS peak < {MEMORY_LIMIT_MIB} MiB": rss_peak < MEMORY_LIMIT_MIB,
            "Events per connection per minute <= 3": writes["worst_events_per_connection_minute"]
            <= 3,
        }
        result["checks"] = checks
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k != "context"}, indent=2))
        for check, ok in checks.items():
            print(f"{'ok  ' if ok else 'MISS'} {check}")
        print(f"JSON written to {out}")
        return 0 if all(checks.values()) else 1
    finally:
        if health is not None:
            health.stop()
        for p in reversed(procs):
            p.stop()
        cp.stop()


if __name__ == "__main__":
    sys.exit(main())
