"""`make bench`: the operator against the local control plane and a loopback provider.

Starts its own control plane (in a temporary directory, on its own ports), a loopback
OpenAI-style provider and the operator as separate processes, creates N connections, then
measures:

- reaction: time from the API's answer to a create (what `kubectl apply` waits for) to the
  status written, as seen on a watch; p50 and p99 over --samples new connections, with the
  N others present;
- sustained validations per second at --interval over --window seconds, and the operator's
  scheduling lag (how late validations start against their plan);
- the operator's RSS and CPU use, and apiserver writes per validation (from the apiserver's
  own `apiserver_request_total`).

With --unrelated-secrets N, N Secrets of --unrelated-secret-kib KiB that no connection uses
(as Helm release Secrets are) exist in the watched namespace before the operator starts, and
each is changed once before the steady state: compare the operator's RSS with a run without.

Prints a summary and writes JSON (default .local/bench/result.json).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx2
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from controlplane.cluster import ControlPlane, free_port  # noqa: E402

NS = "bench"
KEY = "sk-bench-key"
BASE = "/apis/llmconn.dev/v1alpha1/namespaces/bench/llmconnections"


def progress(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def connection(name: str, url: str, interval: str) -> dict[str, Any]:
    return {
        "apiVersion": "llmconn.dev/v1alpha1",
        "kind": "LLMConnection",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "provider": "openai-compatible",
            "endpoint": url,
            "model": "gpt-4o",
            "apiKeySecretRef": {"name": "bench-key"},
            "validation": {"interval": interval},
        },
    }


class Proc:
    def __init__(self, name: str, cmd: list[str], log_dir: Path, env: dict[str, str]) -> None:
        self.log = log_dir / f"{name}.log"
        with open(self.log, "wb") as out:
            self.p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)

    def usage(self) -> tuple[float, float]:
        """(RSS MiB, CPU seconds) from /proc."""
        with open(f"/proc/{self.p.pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
        with open(f"/proc/{self.p.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return rss, cpu

    def high_water(self) -> float:
        """Peak RSS in MiB over the process's life (VmHWM), transient peaks included."""
        with open(f"/proc/{self.p.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.p.kill()


def metric_sum(text: str, family: str, sample: str, **labels: str) -> float:
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        if fam.name == family
        for s in fam.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


class Watcher(threading.Thread):
    """Watches the namespace's connections; records when each first gets a status."""

    def __init__(self, client_args: dict[str, Any], resource_version: str) -> None:
        super().__init__(daemon=True)
        self.client_args = client_args
        self.rv = resource_version
        self.first_status: dict[str, float] = {}  # first verdict (lastValidationTime)
        self.first_any: dict[str, float] = {}  # first status of any kind (Ready=Unknown too)
        self.stop_flag = False

    def run(self) -> None:
        try:
            self._watch()
        except httpx2.HTTPError:
            if not self.stop_flag:
                raise  # the apiserver going away at the end is expected; before, it is not

    def _watch(self) -> None:
        with httpx2.Client(**self.client_args, timeout=None) as client:
            while not self.stop_flag:
                params = {"watch": "1", "resourceVersion": self.rv, "allowWatchBookmarks": "true"}
                with client.stream("GET", BASE, params=params) as resp:
                    for line in resp.iter_lines():
                        if self.stop_flag:
                            return
                        if not line:
                            continue
                        event = json.loads(line)
                        obj = event.get("object", {})
                        self.rv = obj.get("metadata", {}).get("resourceVersion", self.rv)
                        name = obj.get("metadata", {}).get("name")
                        status = obj.get("status") or {}
                        if status.get("conditions"):
                            self.first_any.setdefault(name, time.monotonic())
                        if status.get("lastValidationTime"):
                            self.first_status.setdefault(name, time.monotonic())


async def put_secrets(client_args: dict[str, Any], count: int, kib: int, version: int) -> None:
    """Create (version 1) or replace the unrelated Secrets, 16 requests at a time."""
    sem = asyncio.Semaphore(16)
    filler = base64.b64encode(os.urandom(kib * 1024)).decode()

    async def one(c: httpx2.AsyncClient, i: int) -> None:
        name = f"unrelated-{i:05d}"
        body = {
            "metadata": {"name": name, "namespace": NS},
            "data": {"release": filler, "version": base64.b64encode(b"%d" % version).decode()},
        }
        async with sem:
            if version == 1:
                r = await c.post(f"/api/v1/namespaces/{NS}/secrets", json=body)
            else:
                r = await c.put(f"/api/v1/namespaces/{NS}/secrets/{name}", json=body)
            r.raise_for_status()

    async with httpx2.AsyncClient(**client_args, timeout=60) as c:
        await asyncio.gather(*(one(c, i) for i in range(count)))


async def create_many(
    client: httpx2.AsyncClient, docs: list[dict[str, Any]], parallel: int
) -> None:
    sem = asyncio.Semaphore(parallel)

    async def one(doc: dict[str, Any]) -> None:
        async with sem:
            r = await client.post(BASE, json=doc)
            if r.status_code not in (201, 409):
                raise RuntimeError(f"create failed: HTTP {r.status_code} {r.text[:200]}")

    await asyncio.gather(*(one(d) for d in docs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--connections", type=int, default=1000, help="connections present (default 1000)"
    )
    ap.add_argument("--interval", default="60s", help="their validation interval (default 60s)")
    ap.add_argument("--window", type=float, default=60.0, help="seconds of steady state measured")
    ap.add_argument("--samples", type=int, default=100, help="reaction samples (default 100)")
    ap.add_argument(
        "--concurrency",
        type=int,
        default=64,
        help="the operator's --concurrency (default 64; the operator's own default is 32)",
    )
    ap.add_argument(
        "--unrelated-secrets",
        type=int,
        default=0,
        help="Secrets no connection uses, present from the start and changed once (default 0)",
    )
    ap.add_argument(
        "--unrelated-secret-kib",
        type=int,
        default=100,
        help="size of each unrelated Secret's data in KiB (default 100)",
    )
    ap.add_argument("--out", default=str(ROOT / ".local" / "bench" / "result.json"))
    args = ap.parse_args(argv)

    bin_dir = ROOT / ".local" / "bin"
    work = Path(tempfile.mkdtemp(prefix="llmconn-bench-"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cp = ControlPlane(work, bin_dir=bin_dir)
    procs: list[Proc] = []
    watcher: Watcher | None = None
    try:
        progress("starting the control plane")
        cp.start()
        cp.kubectl("apply", "-f", str(ROOT / "crds" / "llmconnections.yaml"))
        cp.wait_established("llmconnections.llmconn.dev")
        cp.kubectl("create", "namespace", NS)
        cp.kubectl(
            "create", "secret", "generic", "bench-key", "-n", NS, f"--from-literal=apiKey={KEY}"
        )
        client_args = {
            "base_url": cp.server,
            "headers": {"Authorization": f"Bearer {cp.token}"},
            "verify": str(cp.ca_file),
        }
        if args.unrelated_secrets:
            progress(
                f"creating {args.unrelated_secrets} unrelated Secrets"
                f" of {args.unrelated_secret_kib} KiB"
            )
            asyncio.run(
                put_secrets(client_args, args.unrelated_secrets, args.unrelated_secret_kib, 1)
            )

        port = free_port()
        env = cp.env()
        procs.append(
            Proc(
                "provider",
                [
                    sys.executable,
                    str(ROOT / "tests/servers/openai_dialect.py"),
                    "--port",
                    str(port),
                    "--key",
                    KEY,
                    "--model",
                    "gpt-4o",
                ],
                work,
                env,
            )
        )
        url = f"http://127.0.0.1:{port}/v1"
        metrics_port = free_port()
        operator = Proc(
            "operator",
            [
                sys.executable,
                "-m",
                "llmconn",
                "run",
                "-n",
                NS,
                "--concurrency",
                str(args.concurrency),
                "--metrics-port",
                str(metrics_port),
                "--health-port",
                "0",
                "--log-level",
                "warning",
            ],
            work,
            env,
        )
        procs.append(operator)

        with httpx2.Client(**client_args) as sync:
            for _ in range(300):
                with contextlib.suppress(httpx2.HTTPError):
                    if httpx2.get(f"http://127.0.0.1:{metrics_port}/metrics").status_code == 200:
                        break
                time.sleep(0.2)

            progress(f"creating {args.connections} connections (interval {args.interval})")
            docs = [connection(f"c{i:05d}", url, args.interval) for i in range(args.connections)]
            t0 = time.monotonic()

            async def create() -> None:
                async with httpx2.AsyncClient(**client_args, timeout=60) as c:
                    await create_many(c, docs, 32)

            asyncio.run(create())
            created_in = time.monotonic() - t0

            def validated() -> int:
                items = sync.get(BASE).json()["items"]
                return sum(1 for o in items if (o.get("status") or {}).get("lastValidationTime"))

            done = 0
            while done < args.connections:
                time.sleep(1)
                done = validated()
                progress(f"{done}/{args.connections} validated")
            all_validated_in = time.monotonic() - t0

            # Reaction: new connections, one at a time, with the others present.
            rv = sync.get(BASE).json()["metadata"]["resourceVersion"]
            watcher = Watcher(client_args, rv)
            watcher.start()
            time.sleep(0.5)
            progress(f"measuring reaction over {args.samples} new connections")
            reaction: list[float] = []
            first_any: list[float] = []  # create -> any status (what GitOps gates see first)
            for i in range(args.samples):
                name = f"r{i:05d}"
                sent = time.monotonic()
                resp = sync.post(BASE, json=connection(name, url, "1h"))
                resp.raise_for_status()
                answered = time.monotonic()
                deadline = sent + 10
                while name not in watcher.first_status and time.monotonic() < deadline:
                    time.sleep(0.001)
                if name in watcher.first_status:
                    reaction.append((watcher.first_status[name] - answered) * 1000)
                if name in watcher.first_any:
                    first_any.append((watcher.first_any[name] - answered) * 1000)
                time.sleep(0.05)

            if args.unrelated_secrets:
                progress(f"changing the {args.unrelated_secrets} unrelated Secrets once")
                asyncio.run(
                    put_secrets(client_args, args.unrelated_secrets, args.unrelated_secret_kib, 2)
                )

            # Steady state.
            progress(f"steady state for {args.window:.0f}s")
            m0 = httpx2.get(f"http://127.0.0.1:{metrics_port}/metrics").text
            a0 = cp.apiserver_metrics()
            rss0, cpu0 = operator.usage()
            w0 = time.monotonic()
            rss_peak = rss0
            while time.monotonic() - w0 < args.window:
                time.sleep(min(5.0, args.window))
                rss_peak = max(rss_peak, operator.usage()[0])
            elapsed = time.monotonic() - w0
            m1 = httpx2.get(f"http://127.0.0.1:{metrics_port}/metrics").text
            a1 = cp.apiserver_metrics()
            rss1, cpu1 = operator.usage()
            rss_peak = max(rss_peak, rss1)  # the final sample is a sample too

        validations = metric_sum(
            m1, "llmconn_validations", "llmconn_validations_total"
        ) - metric_sum(m0, "llmconn_validations", "llmconn_validations_total")
        status_writes = a1.total(
            resource="llmconnections", subresource="status", verb="PATCH"
        ) - a0.total(resource="llmconnections", subresource="status", verb="PATCH")
        codes = sorted(
            {
                labels.get("code", "")
                for labels, _ in a1.samples
                if labels.get("resource") == "llmconnections"
                and labels.get("subresource") == "status"
                and labels.get("verb") == "PATCH"
            }
        )
        patches_by_code = {
            code: a1.total(resource="llmconnections", subresource="status", verb="PATCH", code=code)
            - a0.total(resource="llmconnections", subresource="status", verb="PATCH", code=code)
            for code in codes
        }
        other_writes = sum(
            a1.total(resource="llmconnections", subresource="", verb=v)
            - a0.total(resource="llmconnections", subresource="", verb=v)
            for v in ("PATCH", "PUT", "UPDATE", "APPLY")
        )
        lag = {
            q: _histogram_quantile(m1, m0, "llmconn_schedule_lag_seconds", q) for q in (0.5, 0.99)
        }
        failures = metric_sum(
            m1, "llmconn_validations", "llmconn_validations_total", result="failed"
        )
        result = {
            "connections": args.connections,
            "interval": args.interval,
            "operator_concurrency": args.concurrency,
            "unrelated_secrets": {
                "count": args.unrelated_secrets,
                "kib": args.unrelated_secret_kib if args.unrelated_secrets else 0,
            },
            "create_seconds": round(created_in, 2),
            "all_validated_seconds": round(all_validated_in, 2),
            "reaction_ms": {
                "samples": len(reaction),
                "p50": round(percentile(reaction, 50), 1),
                "p99": round(percentile(reaction, 99), 1),
                "max": round(max(reaction), 1) if reaction else None,
                "mean": round(statistics.fmean(reaction), 1) if reaction else None,
            },
            "first_status_ms": {
                "samples": len(first_any),
                "p50": round(percentile(first_any, 50), 1),
                "p99": round(percentile(first_any, 99), 1),
            },
            "steady_state": {
                "window_seconds": round(elapsed, 1),
                "validations": int(validations),
                "validations_per_second": round(validations / elapsed, 1),
                "expected_per_second": round(args.connections / _seconds(args.interval), 1)
                if _seconds(args.interval)
                else 0,
                "schedule_lag_seconds": lag,
                "failed_validations_total": int(failures),
            },
            "operator": {
                "rss_mib_start": round(rss0, 1),
                "rss_mib_end": round(rss1, 1),
                "rss_mib_peak": round(rss_peak, 1),
                "rss_mib_high_water": round(operator.high_water(), 1),
                "cpu_seconds": round(cpu1 - cpu0, 2),
                "cpu_percent_of_one_core": round((cpu1 - cpu0) / elapsed * 100, 1),
            },
            "apiserver": {
                "status_patches": status_writes,
                "status_patches_by_code": {c: n for c, n in patches_by_code.items() if n},
                # The two processes' counters are read a moment apart while writes go on, so
                # the ratio is exact only to within the validations in flight at the two
                # readings (the e2e tests count writes exactly on a quiet connection).
                "boundary_uncertainty": args.concurrency * 2,
                "writes_per_validation": round(status_writes / validations, 3)
                if validations
                else None,
                "other_writes_to_connections": other_writes,
            },
        }
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(summary(result))
        print(f"\nJSON written to {out}")
        return 0
    finally:
        if watcher is not None:
            watcher.stop_flag = True
        for p in reversed(procs):
            p.stop()
        cp.stop()
        if watcher is not None:
            watcher.join(timeout=5)


def _seconds(text: str) -> float:
    from llmconn.spec import parse_duration

    return parse_duration(text)


def _histogram_quantile(now: str, before: str, family: str, q: float) -> float | None:
    """A quantile of a histogram's increase between two scrapes (bucket upper bound)."""

    def buckets(text: str) -> dict[float, float]:
        found: dict[float, float] = {}
        for fam in text_string_to_metric_families(text):
            if fam.name == family:
                for s in fam.samples:
                    if s.name == f"{family}_bucket":
                        le = float(s.labels["le"])
                        found[le] = found.get(le, 0.0) + s.value
        return found

    b1, b0 = buckets(now), buckets(before)
    if not b1:
        return None
    diff = sorted((le, b1[le] - b0.get(le, 0.0)) for le in b1)
    total = diff[-1][1]
    if total <= 0:
        return None
    for le, count in diff:
        if count >= q * total:
            return le
    return diff[-1][0]


def summary(r: dict[str, Any]) -> str:
    s, o, a, re_ = r["steady_state"], r["operator"], r["apiserver"], r["reaction_ms"]
    return "\n".join(
        [
            f"llmconn benchmark: {r['connections']} connections at {r['interval']},"
            f" operator --concurrency {r['operator_concurrency']}"
            + (
                f", {u['count']} unrelated Secrets of {u['kib']} KiB"
                if (u := r["unrelated_secrets"])["count"]
                else ""
            ),
            f"  created in {r['create_seconds']}s; all validated {r['all_validated_seconds']}s after the first create",
            f"  reaction (create -> verdict): p50 {re_['p50']} ms, p99 {re_['p99']} ms over {re_['samples']} samples",
            f"  create -> first status (Ready=Unknown or a verdict): p50 {r['first_status_ms']['p50']} ms,"
            f" p99 {r['first_status_ms']['p99']} ms",
            f"  steady state: {s['validations_per_second']} validations/s (expected {s['expected_per_second']}),"
            f" schedule lag p50 <= {s['schedule_lag_seconds'][0.5]}s, p99 <= {s['schedule_lag_seconds'][0.99]}s",
            f"  operator: RSS {o['rss_mib_end']} MiB (peak {o['rss_mib_peak']},"
            f" high-water {o['rss_mib_high_water']}),"
            f" CPU {o['cpu_percent_of_one_core']}% of one core",
            f"  apiserver: {a['writes_per_validation']} writes per validation,"
            f" {a['other_writes_to_connections']} other writes to connections;"
            f" status PATCHes by HTTP code: {a['status_patches_by_code']}",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
