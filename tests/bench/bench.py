"""`make bench`: the operator against the local control plane and a loopback provider.

Starts its own control plane (in a temporary directory, on its own ports), a loopback
OpenAI-style provider and the operator as separate processes, creates N connections, then
measures:

- catch-up: once every connection has its first verdict, how long the operator takes to
  work off the creation burst (until its queue of due validations, llmconn_queue_depth,
  stays at most --concurrency for three readings 2 s apart; at most --settle-timeout);
  reaction and steady state are measured after it, as they are meant to be: steady;
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

With --peer naive-kopf and --peer blackbox, the same run then measures what a user would
otherwise run, one after the other on the same control plane and provider, llmconn stopped
(see tests/bench/peers/): a naive Kopf operator, measured as llmconn is, in a namespace of its
own; and Prometheus' blackbox_exporter, probing the provider at llmconn's validation rate. The
summary gives llmconn's figure divided by each peer's.

Prints a summary and writes JSON (default .local/bench/result.json), and PNGs of lag, RSS and
CPU over the run and of the peers' ratios next to it (or in --plots-dir).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from peers import blackbox as blackbox_peer  # noqa: E402

from controlplane.cluster import ControlPlane, RequestCounts, free_port  # noqa: E402

NS = "bench"
NAIVE_NS = "bench-naive"  # the naive Kopf peer's connections, apart from llmconn's
KEY = "sk-bench-key"
MODEL = "gpt-4o"
PEERS = ("naive-kopf", "blackbox")
NAIVE_KOPF = Path(__file__).resolve().parent / "peers" / "naive_kopf.py"
# Its own venv (make bench builds it): Kopf imports the kubernetes client wherever it is
# installed, so it must not be in the venv llmconn runs from.
PEER_PYTHON = ROOT / ".local" / "peer-venv" / "bin" / "python"
# As often as a Prometheus would scrape: a scrape exposes a few series per connection, and
# scraping every few seconds would add to the CPU being measured.
LAG_SCRAPE_SECONDS = 15.0
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY"})


def progress(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def collection(ns: str) -> str:
    return f"/apis/llmconn.dev/v1alpha1/namespaces/{ns}/llmconnections"


def current_version(sync: httpx2.Client, path: str) -> str:
    """The collection's resourceVersion now, to watch from: a list of one item. A whole list
    of 10,000 statuses (about 20 MB) costs the API server and etcd seconds of CPU on the
    operator's two cores, and would show in the reaction measured right after it."""
    version: str = sync.get(path, params={"limit": "1"}).json()["metadata"]["resourceVersion"]
    return version


SAMPLE_LABEL = "bench.llmconn.dev/reaction-sample"


def connection(name: str, url: str, interval: str, ns: str = NS) -> dict[str, Any]:
    return {
        "apiVersion": "llmconn.dev/v1alpha1",
        "kind": "LLMConnection",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "provider": "openai-compatible",
            "endpoint": url,
            "model": MODEL,
            "apiKeySecretRef": {"name": "bench-key"},
            "validation": {"interval": interval},
        },
    }


class Proc:
    def __init__(self, name: str, cmd: list[str], log_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.cmd, self.env = cmd, env
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


class Sampler(threading.Thread):
    """A process's RSS and CPU every `every` seconds from its start, and with `metrics` (an
    llmconn /metrics URL) its schedule lag p99 since the previous scrape, scraped every
    LAG_SCRAPE_SECONDS: the series the plots draw. `mark` notes when a phase of the measurement
    begins or ends."""

    def __init__(self, proc: Proc, every: float, metrics: str | None = None) -> None:
        super().__init__(daemon=True)
        self.proc, self.every, self.metrics = proc, every, metrics
        self.t0 = time.monotonic()
        self.points: list[dict[str, Any]] = []
        self.marks: dict[str, float] = {}
        self._done = threading.Event()

    def mark(self, name: str) -> None:
        self.marks[name] = round(time.monotonic() - self.t0, 1)

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=10)

    def run(self) -> None:
        before_t, before_cpu, before_text, before_scrape = self.t0, 0.0, "", 0.0
        while not self._done.wait(self.every):
            try:
                rss, cpu = self.proc.usage()
            except (OSError, StopIteration):
                return  # the process has ended
            now = time.monotonic()
            point: dict[str, Any] = {
                "t": round(now - self.t0, 1),
                "rss_mib": round(rss, 1),
                "cpu_percent": round((cpu - before_cpu) / (now - before_t) * 100, 1),
            }
            if self.metrics and now - before_scrape >= LAG_SCRAPE_SECONDS:
                before_scrape = now
                text = ""
                with contextlib.suppress(httpx2.HTTPError):
                    text = httpx2.get(self.metrics, timeout=5).text
                if text and before_text:
                    point["lag_p99_s"] = _histogram_quantile(
                        text, before_text, "llmconn_schedule_lag_seconds", 0.99
                    )
                before_text = text or before_text
            self.points.append(point)
            before_t, before_cpu = now, cpu


class ProviderLog:
    """Counts the provider's GET /models answers in its access log: one per validation, for
    llmconn and the naive peer alike (the peer has no metrics of its own)."""

    LINE = re.compile(rb'"GET /v1/models HTTP/[0-9.]+" ')

    def __init__(self, path: Path) -> None:
        self.path = path

    def count(self) -> int:
        with open(self.path, "rb") as f:
            return len(self.LINE.findall(f.read()))


def only(text: str, family: str) -> str:
    """The lines of `text` about `family`: parsing all 40,000 per-connection series of 10,000
    connections in this process, on the operator's two cores, would weigh on what it measures."""
    return "\n".join(line for line in text.splitlines() if family in line) + "\n"


def metric_sum(text: str, family: str, sample: str, **labels: str) -> float:
    return sum(
        s.value
        for fam in text_string_to_metric_families(only(text, family))
        if fam.name == family
        for s in fam.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


def writes_by_resource(before: RequestCounts, after: RequestCounts) -> dict[str, int]:
    """apiserver writes between two readings, by "VERB resource[/subresource]" (all
    namespaces), e.g. "PATCH llmconnections/status"."""

    def sums(counts: RequestCounts) -> dict[str, float]:
        found: dict[str, float] = {}
        for labels, value in counts.samples:
            if (verb := labels.get("verb", "")) in WRITE_VERBS:
                name = f"{verb} {labels.get('resource', '')}" + (
                    f"/{sub}" if (sub := labels.get("subresource")) else ""
                )
                found[name] = found.get(name, 0.0) + value
        return found

    s0, s1 = sums(before), sums(after)
    return {k: int(v - s0.get(k, 0.0)) for k, v in sorted(s1.items()) if v - s0.get(k, 0.0)}


def connection_and_event_writes(writes: dict[str, int]) -> int:
    """The operator's writes among `writes`: to the connections (any subresource, creates
    left out: those are the benchmark's) and Events. Kopf posts its change handlers' log lines
    as Events by default; llmconn posts Events on transitions only."""
    return sum(
        n
        for k, n in writes.items()
        if k.split(" ")[1].split("/")[0] in ("llmconnections", "events")
        and k != "POST llmconnections"
    )


class Watcher(threading.Thread):
    """Watches a namespace's connections; records when each first gets a status."""

    def __init__(
        self,
        client_args: dict[str, Any],
        resource_version: str,
        ns: str = NS,
        label_selector: str | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.client_args = client_args
        self.rv = resource_version
        self.path = collection(ns)
        # Only the objects a user waits for, filtered by the API server, as `kubectl wait`
        # filters by name: this process is on the operator's two cores, and parsing every
        # status write of 10,000 connections would delay what it measures.
        self.label_selector = label_selector
        self.seen = threading.Condition()
        self.first_status: dict[str, float] = {}  # first verdict (lastValidationTime)
        self.first_any: dict[str, float] = {}  # first status of any kind (Ready=Unknown too)
        # The verdict's own time (status.lastValidationTime: the probe's end, on the
        # operator's clock, which is this machine's), to split the reaction in two.
        self.verdict_at: dict[str, float] = {}
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
                if self.label_selector:
                    params["labelSelector"] = self.label_selector
                with client.stream("GET", self.path, params=params) as resp:
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
                        if stamp := status.get("lastValidationTime"):
                            self.first_status.setdefault(name, time.monotonic())
                            self.verdict_at.setdefault(name, _epoch(stamp))
                            with self.seen:
                                self.seen.notify_all()

    def wait(self, name: str, deadline: float) -> bool:
        """Until `name` has a verdict (True) or the monotonic `deadline` passes."""
        with self.seen:
            return self.seen.wait_for(
                lambda: name in self.first_status, max(0.0, deadline - time.monotonic())
            )


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
            r = await client.post(collection(doc["metadata"]["namespace"]), json=doc)
            if r.status_code not in (201, 409):
                raise RuntimeError(f"create failed: HTTP {r.status_code} {r.text[:200]}")

    await asyncio.gather(*(one(d) for d in docs))


@dataclass
class Measured:
    """What `measure` saw of one operator: the same phases for llmconn and the naive peer."""

    created_in: float
    all_validated_in: float
    reaction: list[float]
    first_any: list[float]
    first_writes: dict[str, int]  # from the first create until every connection has a verdict
    elapsed: float = 0.0
    rss0: float = 0.0
    rss1: float = 0.0
    rss_peak: float = 0.0
    high_water: float = 0.0
    cpu: float = 0.0
    requests: tuple[RequestCounts, RequestCounts] | None = None
    snapshots: tuple[Any, Any] = (None, None)
    provider_requests: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def measure(
    *,
    ns: str,
    proc: Proc,
    sampler: Sampler,
    cp: ControlPlane,
    client_args: dict[str, Any],
    url: str,
    args: argparse.Namespace,
    provider: ProviderLog,
    snapshot: Callable[[], Any] = lambda: None,
    before_window: Callable[[list[str]], None] = lambda names: None,
    backlog: Callable[[], float] | None = None,
) -> Measured:
    """Create N connections in `ns` and wait until each has a verdict, then until the
    operator's `backlog` (due validations not started) is worked off; measure reaction over
    new connections one at a time; then the steady state over the window. `snapshot` is taken
    at the window's two ends (llmconn's /metrics); `before_window` gets the sample names. A
    peer without a `backlog` reading goes on at once."""
    base = collection(ns)
    with httpx2.Client(**client_args) as sync:
        progress(f"creating {args.connections} connections in {ns} (interval {args.interval})")
        docs = [connection(f"c{i:05d}", url, args.interval, ns) for i in range(args.connections)]
        # Verdicts are counted from a watch: listing 10,000 objects every second would load
        # the API server and this process (on the operator's two cores) more than the
        # operator does.
        counter = Watcher(client_args, current_version(sync, base), ns)
        counter.start()
        c0 = cp.apiserver_metrics()
        t0 = time.monotonic()

        async def create() -> None:
            async with httpx2.AsyncClient(**client_args, timeout=60) as c:
                await create_many(c, docs, 32)

        asyncio.run(create())
        created_in = time.monotonic() - t0
        sampler.mark("created")

        done = 0
        while done < args.connections:
            time.sleep(1)
            done = len(counter.first_status)
            progress(f"{done}/{args.connections} validated")
        all_validated_in = time.monotonic() - t0
        counter.stop_flag = True
        sampler.mark("all_validated")
        first_writes = writes_by_resource(c0, cp.apiserver_metrics())
        caught_up_in = settle(backlog, args) if backlog is not None else None
        if caught_up_in is not None:
            sampler.mark("caught_up")

        # Reaction: new connections, one at a time, with the others present.
        rv = current_version(sync, base)
        watcher = Watcher(client_args, rv, ns, label_selector=f"{SAMPLE_LABEL}=true")
        watcher.start()
        try:
            time.sleep(0.5)
            progress(f"measuring reaction over {args.samples} new connections")
            sampler.mark("reaction_start")
            reaction: list[float] = []
            first_any: list[float] = []  # create -> any status (what GitOps gates see first)
            to_verdict: list[float] = []  # create -> the probe's end (the rest is write + watch)
            names = []
            for i in range(args.samples):
                name = f"r{i:05d}"
                names.append(name)
                sent = time.monotonic()
                doc = connection(name, url, "1h", ns)
                doc["metadata"]["labels"] = {SAMPLE_LABEL: "true"}
                resp = sync.post(base, json=doc)
                resp.raise_for_status()
                answered, answered_wall = time.monotonic(), time.time()
                if watcher.wait(name, sent + 10):
                    reaction.append((watcher.first_status[name] - answered) * 1000)
                    to_verdict.append((watcher.verdict_at[name] - answered_wall) * 1000)
                if name in watcher.first_any:
                    first_any.append((watcher.first_any[name] - answered) * 1000)
                time.sleep(0.05)
            sampler.mark("reaction_end")
        finally:
            watcher.stop_flag = True
        measured = Measured(created_in, all_validated_in, reaction, first_any, first_writes)
        measured.extra["reaction_to_verdict"] = to_verdict
        measured.extra["caught_up_seconds"] = caught_up_in
        before_window(names)

        # Steady state.
        progress(f"steady state for {args.window:.0f}s")
        sampler.mark("steady_start")
        s0 = snapshot()
        a0 = cp.apiserver_metrics()
        p0 = provider.count()
        rss0, cpu0 = proc.usage()
        w0 = time.monotonic()
        rss_peak = rss0
        while time.monotonic() - w0 < args.window:
            time.sleep(min(5.0, args.window))
            rss_peak = max(rss_peak, proc.usage()[0])
        elapsed = time.monotonic() - w0
        s1 = snapshot()
        a1 = cp.apiserver_metrics()
        p1 = provider.count()
        rss1, cpu1 = proc.usage()
        sampler.mark("steady_end")
    measured.elapsed = elapsed
    measured.rss0, measured.rss1 = rss0, rss1
    measured.rss_peak = max(rss_peak, rss1)  # the final sample is a sample too
    measured.high_water = proc.high_water()
    measured.cpu = cpu1 - cpu0
    measured.requests = (a0, a1)
    measured.snapshots = (s0, s1)
    measured.provider_requests = p1 - p0
    watcher.join(timeout=5)
    return measured


SETTLED_READINGS = 3  # readings in a row, SETTLE_EVERY apart, with the backlog worked off


SETTLE_EVERY = 2.0


def settle(backlog: Callable[[], float], args: argparse.Namespace) -> float | None:
    """Wait until the creation burst is worked off: `backlog` (the operator's due validations
    not yet started) at most --concurrency, one round of its workers, for SETTLED_READINGS
    readings in a row. Returns the seconds it took, or None when --settle-timeout passed
    first (the measures that follow are then of a catching-up operator, and say so)."""
    t0 = time.monotonic()
    calm = 0
    while calm < SETTLED_READINGS:
        waited = time.monotonic() - t0
        if waited > args.settle_timeout:
            progress(f"still catching up after {waited:.0f}s: measuring anyway")
            return None
        depth = backlog()
        calm = calm + 1 if depth <= args.concurrency else 0
        if calm == 0:
            progress(f"catching up with the creation burst: {depth:.0f} validations due")
        time.sleep(SETTLE_EVERY)
    return round(time.monotonic() - t0 - SETTLE_EVERY * SETTLED_READINGS, 1)


def first_verdict_writes(m: Measured, args: argparse.Namespace) -> float:
    """The operator's writes from the first create until every connection had a verdict, per
    connection (a connection whose timer fires again before the last verdict adds its own)."""
    return round(float(connection_and_event_writes(m.first_writes)) / args.connections, 3)


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """llmconn's figure divided by a peer's (None when either is missing or theirs is 0)."""
    if ours is None or theirs is None or theirs == 0 or ours != ours or theirs != theirs:
        return None
    return round(ours / theirs, 3)


def reaction_summary(values: list[float]) -> dict[str, Any]:
    return {
        "samples": len(values),
        "p50": round(percentile(values, 50), 1),
        "p99": round(percentile(values, 99), 1),
        "max": round(max(values), 1) if values else None,
        "mean": round(statistics.fmean(values), 1) if values else None,
    }


def reaction_split(reaction: list[float], to_verdict: list[float]) -> dict[str, Any]:
    rest = [r - v for r, v in zip(reaction, to_verdict, strict=True)]
    return {
        "to_verdict": reaction_summary(to_verdict),
        "verdict_to_seen": reaction_summary(rest),
        "samples": [[round(r, 1), round(v, 1)] for r, v in zip(reaction, to_verdict, strict=True)],
    }


def compare(rows: dict[str, tuple[float | None, float | None, str]]) -> dict[str, Any]:
    """{measure: (llmconn's figure, the peer's, unit)} -> llmconn, peer, unit and their ratio."""
    return {
        name: {"llmconn": ours, "peer": theirs, "unit": unit, "ratio": ratio(ours, theirs)}
        for name, (ours, theirs, unit) in rows.items()
    }


def wait_for(what: str, proc: Proc, ready: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.p.poll() is not None:
            raise RuntimeError(f"{what} exited ({proc.p.returncode}); see {proc.log}")
        with contextlib.suppress(httpx2.HTTPError):
            if ready():
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {timeout:.0f}s; see {proc.log}")


def run_naive_kopf(
    *,
    cp: ControlPlane,
    work: Path,
    procs: list[Proc],
    client_args: dict[str, Any],
    url: str,
    args: argparse.Namespace,
    provider: ProviderLog,
    llm: dict[str, Any],
) -> tuple[dict[str, Any], Sampler]:
    """The naive Kopf operator (peers/naive_kopf.py) with `kopf run`, measured as llmconn is,
    on N connections of its own namespace."""
    cp.kubectl("create", "namespace", NAIVE_NS)
    cp.kubectl(
        "create", "secret", "generic", "bench-key", "-n", NAIVE_NS, f"--from-literal=apiKey={KEY}"
    )
    live = free_port()
    env = cp.env() | {"NAIVE_KOPF_INTERVAL": str(_seconds(args.interval))}
    cmd = [str(PEER_PYTHON), "-m", "kopf", "run", "--standalone", "-n", NAIVE_NS]
    cmd += [f"--liveness=http://127.0.0.1:{live}/healthz", str(NAIVE_KOPF)]
    proc = Proc("naive-kopf", cmd, work, env)
    procs.append(proc)
    sampler = Sampler(proc, args.sample_every)
    sampler.start()
    wait_for(
        "the naive Kopf operator",
        proc,
        lambda: httpx2.get(f"http://127.0.0.1:{live}/healthz").status_code == 200,
    )

    def drop_samples(names: list[str]) -> None:
        # Kopf's timer would validate them every interval too (it ignores spec.validation):
        # gone, the window sees N connections validating, as llmconn's does.
        with httpx2.Client(**client_args) as c:
            for name in names:
                c.delete(f"{collection(NAIVE_NS)}/{name}").raise_for_status()
            deadline = time.monotonic() + 120
            while len(c.get(collection(NAIVE_NS)).json()["items"]) > args.connections:
                if time.monotonic() > deadline:
                    raise RuntimeError("the naive Kopf operator kept its finalizers")
                time.sleep(0.5)
            # Its verdicts must be real ones: a peer that cannot read the Secret writes failed
            # statuses without reaching the provider, and would look cheap.
            failed = [
                o
                for o in c.get(collection(NAIVE_NS)).json()["items"]
                if (o.get("status") or {}).get("result") != "success"
            ]
            if failed:
                first, status = failed[0]["metadata"]["name"], failed[0].get("status") or {}
                raise RuntimeError(
                    f"the naive Kopf operator failed {len(failed)} connections, e.g."
                    f" {first}: {status.get('reason')}: {status.get('message')}"
                )

    m = measure(
        ns=NAIVE_NS,
        proc=proc,
        sampler=sampler,
        cp=cp,
        client_args=client_args,
        url=url,
        args=args,
        provider=provider,
        before_window=drop_samples,
    )
    sampler.stop()
    proc.stop()
    assert m.requests is not None
    writes = writes_by_resource(*m.requests)
    validations = m.provider_requests
    per_validation = (
        round(connection_and_event_writes(writes) / validations, 3) if validations else None
    )
    cpu_ms = round(m.cpu / validations * 1000, 2) if validations else None
    found: dict[str, Any] = {
        "what": "Kopf: on.create/update and a timer per object, default storages, "
        "the kubernetes client, a new HTTP client per probe",
        "create_seconds": round(m.created_in, 2),
        "all_validated_seconds": round(m.all_validated_in, 2),
        "reaction_ms": reaction_summary(m.reaction),
        "first_status_ms": reaction_summary(m.first_any),
        "steady_state": {
            "window_seconds": round(m.elapsed, 1),
            "validations": validations,  # the provider's GET /models answers
            "validations_per_second": round(validations / m.elapsed, 1),
        },
        "rss_mib_end": round(m.rss1, 1),
        "rss_mib_peak": round(m.rss_peak, 1),
        "rss_mib_high_water": round(m.high_water, 1),
        "cpu_seconds": round(m.cpu, 2),
        "cpu_percent_of_one_core": round(m.cpu / m.elapsed * 100, 1),
        "cpu_ms_per_validation": cpu_ms,
        "apiserver": {
            "writes_by_resource": writes,
            "writes_per_validation": per_validation,
            "first_verdict_writes_by_resource": m.first_writes,
            "first_verdict_writes_per_connection": first_verdict_writes(m, args),
        },
    }
    o, r = llm["operator"], llm["reaction_ms"]
    found["compared"] = compare(
        {
            f"time until all {args.connections} have a verdict": (
                llm["all_validated_seconds"],
                found["all_validated_seconds"],
                "s",
            ),
            "reaction p50": (r["p50"], found["reaction_ms"]["p50"], "ms"),
            "reaction p99": (r["p99"], found["reaction_ms"]["p99"], "ms"),
            "writes per validation": (
                llm["apiserver"]["connection_and_event_writes_per_validation"],
                per_validation,
                "",
            ),
            "writes per connection until all have a verdict": (
                llm["apiserver"]["first_verdict_writes_per_connection"],
                found["apiserver"]["first_verdict_writes_per_connection"],
                "",
            ),
            "RSS": (o["rss_mib_end"], found["rss_mib_end"], "MiB"),
            "CPU": (o["cpu_percent_of_one_core"], found["cpu_percent_of_one_core"], "% core"),
            "CPU per validation": (o["cpu_ms_per_validation"], cpu_ms, "ms"),
        }
    )
    return found, sampler


def run_blackbox(
    *,
    work: Path,
    procs: list[Proc],
    binary: Path,
    url: str,
    args: argparse.Namespace,
    llm: dict[str, Any],
) -> tuple[dict[str, Any], Sampler]:
    """blackbox_exporter probing the provider at llmconn's validation rate, driven as
    Prometheus drives it (peers/blackbox.py); CPU per probe against llmconn's per validation."""
    config = work / "blackbox.yml"
    config.write_text(blackbox_peer.config(KEY, MODEL))
    port = free_port()
    exporter = f"http://127.0.0.1:{port}"
    version = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[:1]
    proc = Proc(
        "blackbox", blackbox_peer.command(str(binary), str(config), port), work, dict(os.environ)
    )
    procs.append(proc)
    sampler = Sampler(proc, args.sample_every)
    sampler.start()
    wait_for(
        "blackbox_exporter", proc, lambda: httpx2.get(f"{exporter}/-/healthy").status_code == 200
    )
    rate = args.connections / _seconds(args.interval)
    target = f"{url}/models"
    progress(f"blackbox_exporter: warming up, then {args.window:.0f}s at {rate:.1f} probes/s")
    asyncio.run(blackbox_peer.drive(exporter, target, rate, min(5.0, args.window)))
    sampler.mark("steady_start")
    _, cpu0 = proc.usage()
    w0 = time.monotonic()
    counts = asyncio.run(blackbox_peer.drive(exporter, target, rate, args.window))
    elapsed = time.monotonic() - w0
    rss1, cpu1 = proc.usage()
    sampler.mark("steady_end")
    sampler.stop()
    proc.stop()
    probes = counts["succeeded"] + counts["failed"]
    cpu_ms = round((cpu1 - cpu0) / probes * 1000, 3) if probes else None
    found: dict[str, Any] = {
        "what": "Prometheus blackbox_exporter, http module, GET /models with the bearer key",
        "version": version[0] if version else None,
        "rate_per_second": round(rate, 1),
        "window_seconds": round(elapsed, 1),
        **counts,
        "cpu_seconds": round(cpu1 - cpu0, 2),
        "cpu_percent_of_one_core": round((cpu1 - cpu0) / elapsed * 100, 1),
        "cpu_ms_per_probe": cpu_ms,
        "rss_mib_end": round(rss1, 1),
        "target_cpu_ratio_at_most": 2.0,
    }
    found["compared"] = compare(
        {
            "CPU per validation / per probe": (
                llm["operator"]["cpu_ms_per_validation"],
                cpu_ms,
                "ms",
            ),
            "RSS": (llm["operator"]["rss_mib_end"], found["rss_mib_end"], "MiB"),
        }
    )
    return found, sampler


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--connections", type=int, default=1000, help="connections present (default 1000)"
    )
    ap.add_argument("--interval", default="60s", help="their validation interval (default 60s)")
    ap.add_argument("--window", type=float, default=60.0, help="seconds of steady state measured")
    ap.add_argument(
        "--restart",
        action="store_true",
        help="after the steady state, restart the operator and measure until every connection"
        " is validated again (spread, Events, writes)",
    )
    ap.add_argument("--samples", type=int, default=100, help="reaction samples (default 100)")
    ap.add_argument(
        "--settle-timeout",
        type=float,
        default=600.0,
        help="longest wait, once every connection has a verdict, for the operator to work off"
        " the creation burst before reaction and steady state are measured (default 600)",
    )
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
    ap.add_argument(
        "--peer",
        action="append",
        choices=PEERS,
        default=[],
        help="also measure a peer in the same run, after llmconn (repeat for both)",
    )
    ap.add_argument(
        "--other-shard-writes",
        type=int,
        default=0,
        help="instead: the CPU shard 0 of 2 spends per status write of shard 1's connections,"
        " over this many writes (e.g. 6000 with --connections 1000)",
    )
    ap.add_argument(
        "--other-shard-rate",
        type=float,
        default=200.0,
        help="those writes per second (default 200)",
    )
    ap.add_argument("--out", default=str(ROOT / ".local" / "bench" / "result.json"))
    ap.add_argument(
        "--plots-dir", help="where the PNGs go (default: the directory of --out); e.g. docs/img"
    )
    ap.add_argument(
        "--sample-every",
        type=float,
        default=2.0,
        help="seconds between the samples of RSS, CPU and lag that the plots draw (default 2)",
    )
    args = ap.parse_args(argv)
    peers = list(dict.fromkeys(args.peer))
    if args.window < _seconds(args.interval):
        progress(
            f"note: the window ({args.window:.0f}s) is shorter than the interval: it sees only"
            " the connections that happen to be due in it, so per-validation figures are rough"
        )

    bin_dir = ROOT / ".local" / "bin"
    try:
        import plots
    except ImportError as e:
        ap.error(f"the plots need the bench extra ({e}): pip install -e '.[test,bench]'")
    if "naive-kopf" in peers and not PEER_PYTHON.exists():
        ap.error(f"--peer naive-kopf needs {PEER_PYTHON} with the peer extra: run `make bench`")
    if "blackbox" in peers and not (bin_dir / "blackbox_exporter").exists():
        ap.error("--peer blackbox needs blackbox_exporter: make blackbox-exporter")

    # A SIGTERM (make interrupted, a job stopped) unwinds like Ctrl-C, so that the finally below
    # stops every process this run started.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    work = Path(tempfile.mkdtemp(prefix="llmconn-bench-"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plots_dir = Path(args.plots_dir) if args.plots_dir else out.parent
    plots_dir.mkdir(parents=True, exist_ok=True)
    cp = ControlPlane(work, bin_dir=bin_dir)
    procs: list[Proc] = []
    samplers: dict[str, Sampler] = {}
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
                    MODEL,
                ],
                work,
                env,
            )
        )
        provider = ProviderLog(work / "provider.log")
        url = f"http://127.0.0.1:{port}/v1"
        metrics_port = free_port()
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        if args.other_shard_writes:
            result = measure_other_shard(cp, client_args, url, work, procs, env, args)
            out.write_text(json.dumps(result, indent=2) + "\n")
            print(json.dumps(result, indent=2))
            print(f"\nJSON written to {out}")
            return 0
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
                # One namespace holds all the connections (167 writes a second at 10,000):
                # the per-namespace budget, a tenant's limit, is off, as its administrator
                # would size it (docs/operations.md).
                "--namespace-write-rate",
                "0",
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
        samplers["llmconn"] = Sampler(operator, args.sample_every, metrics_url)
        samplers["llmconn"].start()
        wait_for("the operator", operator, lambda: httpx2.get(metrics_url).status_code == 200)

        def change_unrelated_secrets(names: list[str]) -> None:
            if args.unrelated_secrets:
                progress(f"changing the {args.unrelated_secrets} unrelated Secrets once")
                asyncio.run(
                    put_secrets(client_args, args.unrelated_secrets, args.unrelated_secret_kib, 2)
                )

        m = measure(
            ns=NS,
            proc=operator,
            sampler=samplers["llmconn"],
            cp=cp,
            client_args=client_args,
            url=url,
            args=args,
            provider=provider,
            snapshot=lambda: httpx2.get(metrics_url).text,
            before_window=change_unrelated_secrets,
            backlog=lambda: metric_sum(
                httpx2.get(metrics_url).text, "llmconn_queue_depth", "llmconn_queue_depth"
            ),
        )
        result = {"context": context(argv), **llmconn_result(m, args)}
        if args.restart:
            result["restart"], operator = measure_restart(
                operator, procs, cp, client_args, metrics_url, args
            )
        samplers["llmconn"].stop()

        result["peers"] = {}
        if peers:
            operator.stop()  # each peer runs alone, as llmconn did
        for peer in peers:
            progress(f"peer {peer}")
            if peer == "naive-kopf":
                result["peers"][peer], samplers[peer] = run_naive_kopf(
                    cp=cp,
                    work=work,
                    procs=procs,
                    client_args=client_args,
                    url=url,
                    args=args,
                    provider=provider,
                    llm=result,
                )
            else:
                result["peers"][peer], samplers[peer] = run_blackbox(
                    work=work,
                    procs=procs,
                    binary=bin_dir / "blackbox_exporter",
                    url=url,
                    args=args,
                    llm=result,
                )
        result["series"] = {name: s.points for name, s in samplers.items()}
        result["marks"] = {name: s.marks for name, s in samplers.items()}

        out.write_text(json.dumps(result, indent=2) + "\n")
        figures = [plots_dir / plots.OVER_TIME]
        plots.over_time(result, figures[0])
        if result["peers"]:
            figures.append(plots_dir / plots.PEER_RATIOS)
            plots.peer_ratios(result, figures[1])
        print(summary(result))
        print(f"\nJSON written to {out}; plots: {', '.join(str(f) for f in figures)}")
        return 0
    finally:
        for s in samplers.values():
            s.stop()
        for p in reversed(procs):
            p.stop()
        cp.stop()


def context(argv: list[str] | None) -> dict[str, Any]:
    """Where and how the figures were made, carried in the result itself: figures from
    machines of one kind still differ by CPU model (32% of a core on one, 46.5% on another)."""
    import platform
    from importlib.metadata import version

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "make bench BENCH_ARGS="
        + shlex.quote(" ".join(sys.argv[1:] if argv is None else argv)),
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kopf": version("kopf"),
        "llmconn": version("llmconn"),
        "kubernetes": kube_version(),
    }


def kube_version() -> str:
    """The version the local kube-apiserver was built as."""
    try:
        run = subprocess.run(
            [str(ROOT / ".local" / "bin" / "kube-apiserver"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return run.stdout.strip().removeprefix("Kubernetes ") or "unknown"


def measure_other_shard(
    cp: ControlPlane,
    client_args: dict[str, Any],
    url: str,
    work: Path,
    procs: list[Proc],
    env: dict[str, str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """What a shard spends on the events of connections that are another shard's: the
    operator runs as shard 0 of 2 over --connections (interval 1h, so it validates nothing
    in the window), then the benchmark writes the status of shard 1's connections
    --other-shard-writes times at --other-shard-rate a second, and the operator's CPU in
    that time, less its idle CPU, is divided by the writes (input to the sharding model)."""
    operator = Proc(
        "operator-shard-0-of-2",
        [
            *(sys.executable, "-m", "llmconn", "run", "-n", NS, "--shard-count", "2"),
            *("--shard-index", "0", "--health-port", "0", "--log-level", "warning"),
        ],
        work,
        env,
    )
    procs.append(operator)
    progress(f"creating {args.connections} connections (interval 1h), shard 0 of 2 running")
    docs = [connection(f"c{i:05d}", url, "1h", NS) for i in range(args.connections)]

    async def create() -> None:
        async with httpx2.AsyncClient(**client_args, timeout=60) as c:
            await create_many(c, docs, 32)

    asyncio.run(create())
    with httpx2.Client(**client_args, timeout=60) as sync:
        deadline = time.monotonic() + 600
        while True:
            items = sync.get(collection(NS)).json()["items"]
            mine = [o for o in items if shard_of(o) == 0]
            others = [o["metadata"]["name"] for o in items if shard_of(o) == 1]
            done = sum(1 for o in mine if (o.get("status") or {}).get("lastValidationTime"))
            progress(f"shard 0: {done}/{len(mine)} validated")
            if done == len(mine) or time.monotonic() > deadline:
                break
            time.sleep(2)
    time.sleep(10)
    _, cpu0 = operator.usage()
    t0 = time.monotonic()
    time.sleep(30)
    _, cpu1 = operator.usage()
    idle = (cpu1 - cpu0) / (time.monotonic() - t0)
    progress(f"writing {args.other_shard_writes} statuses of shard 1's connections")

    async def writes() -> None:
        async with httpx2.AsyncClient(**client_args, timeout=60) as c:
            start = time.monotonic()
            for i in range(args.other_shard_writes):
                if (wait := start + i / args.other_shard_rate - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                name = others[i % len(others)]
                r = await c.patch(
                    f"{collection(NS)}/{name}/status",
                    json={"status": {"message": f"write {i}"}},
                    headers={"Content-Type": "application/merge-patch+json"},
                )
                r.raise_for_status()

    _, cpu0 = operator.usage()
    t0 = time.monotonic()
    asyncio.run(writes())
    time.sleep(2)  # the last events reach the operator
    _, cpu1 = operator.usage()
    elapsed = time.monotonic() - t0
    spent = cpu1 - cpu0 - idle * elapsed
    return {
        "connections": args.connections,
        "own": len(mine),
        "other_shard_writes": args.other_shard_writes,
        "rate_per_second": args.other_shard_rate,
        "idle_cpu_percent_of_one_core": round(idle * 100, 2),
        "cpu_percent_while_writing": round((cpu1 - cpu0) / elapsed * 100, 2),
        "cpu_ms_per_other_shard_event": round(spent / args.other_shard_writes * 1000, 3),
    }


def shard_of(obj: dict[str, Any], count: int = 2) -> int:
    """The operator's rule (llmconn.controller.peering.Shard): crc32 of the UID modulo the count."""
    return zlib.crc32(obj["metadata"]["uid"].encode()) % count


def measure_restart(
    operator: Proc,
    procs: list[Proc],
    cp: ControlPlane,
    client_args: dict[str, Any],
    metrics_url: str,
    args: argparse.Namespace,
) -> tuple[dict[str, Any], Proc]:
    """Stop the operator (SIGTERM, as a rollout does) and start it again with every connection
    present; watch until each of the N has a new verdict. What the design promises: each one
    continues its schedule from status.lastValidationTime (spread over an interval, no storm),
    and no Event is posted for a verdict that did not change."""
    interval = _seconds(args.interval)
    events = f"/api/v1/namespaces/{NS}/events"
    with httpx2.Client(**client_args) as sync:
        before = {
            o["metadata"]["name"]: _epoch(o["status"]["lastValidationTime"])
            for o in sync.get(collection(NS)).json()["items"]
            if (o.get("status") or {}).get("lastValidationTime")
        }
        progress("restarting the operator")
        operator.stop()
        procs.remove(operator)
        e0 = len(sync.get(events).json()["items"])
        a0 = cp.apiserver_metrics()
        rv = current_version(sync, collection(NS))
        watcher = Watcher(client_args, rv, NS)
        watcher.start()
        t0, wall0 = time.monotonic(), time.time()
        restarted = Proc("operator-restarted", operator.cmd, operator.log.parent, operator.env)
        procs.append(restarted)
        wait_for("the operator", restarted, lambda: httpx2.get(metrics_url).status_code == 200)
        up = time.monotonic() - t0
        names = {f"c{i:05d}" for i in range(args.connections)}
        deadline = t0 + 3 * interval + 120
        rss_peak = 0.0
        while time.monotonic() < deadline:
            done = len(names & watcher.first_status.keys())
            progress(f"{done}/{args.connections} validated again")
            rss_peak = max(rss_peak, restarted.usage()[0])
            if done == len(names):
                break
            time.sleep(5)
        again = sorted(watcher.first_status[n] - t0 for n in names if n in watcher.first_status)
        # Against the plan each one had: its last verdict before the stop plus the interval
        # (jitter allows 0.9 to 1.1 of it). Late is the restart's cost; early would be a storm.
        offsets = [
            wall0 + watcher.first_status[n] - t0 - (before[n] + interval)
            for n in names
            if n in watcher.first_status and n in before
        ]
        watcher.stop_flag = True
        a1 = cp.apiserver_metrics()
        new_events = sync.get(events).json()["items"][e0:]
        validations = metric_sum(
            httpx2.get(metrics_url).text, "llmconn_validations", "llmconn_validations_total"
        )
    patches = a1.total(resource="llmconnections", subresource="status", verb="PATCH") - a0.total(
        resource="llmconnections", subresource="status", verb="PATCH"
    )
    per_second = Counter(int(t) for t in again)
    planned = args.connections / interval
    return {
        "operator_up_seconds": round(up, 2),
        "validated_again": len(again),
        "all_validated_again_seconds": round(again[-1], 1) if len(again) == len(names) else None,
        "half_validated_again_seconds": round(again[len(again) // 2], 1) if again else None,
        "max_per_second": max(per_second.values(), default=0),
        "against_plan_seconds": {
            "min": round(min(offsets), 1) if offsets else None,
            "p50": round(percentile(offsets, 50), 1),
            "p99": round(percentile(offsets, 99), 1),
            "max": round(max(offsets), 1) if offsets else None,
        },
        "planned_per_second": round(planned, 1),
        "events_posted": len(new_events),
        "event_reasons": dict(Counter(e.get("reason") for e in new_events)),
        "status_patches": int(patches),
        "validations": int(validations),
        "rss_mib_peak": round(rss_peak, 1),
    }, restarted


def llmconn_result(m: Measured, args: argparse.Namespace) -> dict[str, Any]:
    m0, m1 = m.snapshots
    assert m.requests is not None
    a0, a1 = m.requests
    elapsed = m.elapsed
    validations = metric_sum(m1, "llmconn_validations", "llmconn_validations_total") - metric_sum(
        m0, "llmconn_validations", "llmconn_validations_total"
    )
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
    writes = writes_by_resource(a0, a1)
    lag = {q: _histogram_quantile(m1, m0, "llmconn_schedule_lag_seconds", q) for q in (0.5, 0.99)}
    failures = metric_sum(m1, "llmconn_validations", "llmconn_validations_total", result="failed")
    return {
        "connections": args.connections,
        "interval": args.interval,
        "operator_concurrency": args.concurrency,
        "unrelated_secrets": {
            "count": args.unrelated_secrets,
            "kib": args.unrelated_secret_kib if args.unrelated_secrets else 0,
        },
        "create_seconds": round(m.created_in, 2),
        "all_validated_seconds": round(m.all_validated_in, 2),
        # From then until the creation burst was worked off (None: not within --settle-timeout).
        "caught_up_seconds": m.extra.get("caught_up_seconds"),
        "reaction_ms": reaction_summary(m.reaction),
        # Where the reaction went: create -> the probe's end (watch event, schedule, probe)
        # and the probe's end -> seen by a watch (the status write and the watch), per sample.
        "reaction_split_ms": reaction_split(m.reaction, m.extra.get("reaction_to_verdict", [])),
        "first_status_ms": {
            "samples": len(m.first_any),
            "p50": round(percentile(m.first_any, 50), 1),
            "p99": round(percentile(m.first_any, 99), 1),
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
            "provider_models_requests": m.provider_requests,
        },
        "operator": {
            "rss_mib_start": round(m.rss0, 1),
            "rss_mib_end": round(m.rss1, 1),
            "rss_mib_peak": round(m.rss_peak, 1),
            "rss_mib_high_water": round(m.high_water, 1),
            "cpu_seconds": round(m.cpu, 2),
            "cpu_percent_of_one_core": round(m.cpu / elapsed * 100, 1),
            "cpu_ms_per_validation": round(m.cpu / validations * 1000, 2) if validations else None,
        },
        "apiserver": {
            "status_patches": status_writes,
            "status_patches_by_code": {c: n for c, n in patches_by_code.items() if n},
            # The two processes' counters are read a moment apart while writes go on, so
            # the ratio is exact only to within the validations in flight at the two
            # readings (the e2e tests count writes exactly on a quiet connection).
            "boundary_uncertainty": args.concurrency * 2,
            "writes_per_validation": round(status_writes / validations, 3) if validations else None,
            "other_writes_to_connections": other_writes,
            "writes_by_resource": writes,
            # The measures the naive peer is compared on: the operator's writes to connections
            # and Events, in the window and from the first create until all have a verdict.
            "connection_and_event_writes_per_validation": round(
                connection_and_event_writes(writes) / validations, 3
            )
            if validations
            else None,
            "first_verdict_writes_by_resource": m.first_writes,
            "first_verdict_writes_per_connection": first_verdict_writes(m, args),
        },
    }


def _epoch(rfc3339: str) -> float:
    return dt.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def _seconds(text: str) -> float:
    from llmconn.model.fields import parse_duration

    return parse_duration(text)


def _histogram_quantile(now: str, before: str, family: str, q: float) -> float | None:
    """A quantile of a histogram's increase between two scrapes (bucket upper bound)."""

    def buckets(text: str) -> dict[float, float]:
        found: dict[float, float] = {}
        for fam in text_string_to_metric_families(only(text, family)):
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
    c = r.get("context") or {}
    lines = [
        f"{c.get('date')} on {c.get('cpu_model')} ({c.get('cores')} cores), Python"
        f" {c.get('python')}, Kopf {c.get('kopf')}, Kubernetes {c.get('kubernetes')}:"
        f" {c.get('command')}",
        f"llmconn benchmark: {r['connections']} connections at {r['interval']},"
        f" operator --concurrency {r['operator_concurrency']}"
        + (
            f", {u['count']} unrelated Secrets of {u['kib']} KiB"
            if (u := r["unrelated_secrets"])["count"]
            else ""
        ),
        f"  created in {r['create_seconds']}s; all validated {r['all_validated_seconds']}s after the first create;"
        f" creation burst worked off {r.get('caught_up_seconds')}s later",
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
    if rs := r.get("restart"):
        lines.append(
            f"  restart: up in {rs['operator_up_seconds']}s; all {rs['validated_again']} validated"
            f" again {rs['all_validated_again_seconds']}s after the stop (half by"
            f" {rs['half_validated_again_seconds']}s), at most {rs['max_per_second']}/s (planned"
            f" {rs['planned_per_second']}/s); against each one's plan (last verdict + interval):"
            f" min {rs['against_plan_seconds']['min']}s, p50 {rs['against_plan_seconds']['p50']}s,"
            f" p99 {rs['against_plan_seconds']['p99']}s;"
            f" {rs['events_posted']} Events; {rs['status_patches']}"
            f" status PATCHes for {rs['validations']} validations; RSS peak {rs['rss_mib_peak']} MiB"
        )
    for peer, found in r.get("peers", {}).items():
        lines.append(f"  peer {peer} ({found['what']}), run after llmconn, alone:")
        if peer == "blackbox":
            lines.append(
                f"    {found['probes']} probes at {found['rate_per_second']}/s:"
                f" {found['succeeded']} succeeded, {found['failed']} failed,"
                f" {found['errors']} not answered"
            )
        else:
            st = found["steady_state"]
            lines.append(
                f"    steady state: {st['validations_per_second']} validations/s;"
                f" writes by resource: {found['apiserver']['writes_by_resource']}"
            )
        for name, c in found["compared"].items():
            unit = f" {c['unit']}" if c["unit"] else ""
            lines.append(
                f"    {name}: llmconn {c['llmconn']}{unit}, {peer} {c['peer']}{unit},"
                f" llmconn/{peer} {c['ratio']}"
            )
        if peer == "blackbox":
            cpu = found["compared"]["CPU per validation / per probe"]["ratio"]
            met = (
                "met" if cpu is not None and cpu <= found["target_cpu_ratio_at_most"] else "NOT met"
            )
            lines.append(f"    target: CPU ratio <= {found['target_cpu_ratio_at_most']} ({met})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
