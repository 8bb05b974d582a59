"""Prometheus metrics of the operator: validations, readiness per connection, work in progress.

Labels are limited to namespace, name, provider, result, reason and status: names come from
the API server, the rest from closed sets, so no secret value can reach a label.

/metrics serves prometheus_client's text exposition (format 0.0.4, which every Prometheus
reads; OpenMetrics is not offered), except for the two per-connection
families (four series per connection): each connection's lines are kept rendered and rendered
again only when its row changed. prometheus_client formatted all 40,000 series of 10,000
connections on every scrape, 0.22 s of CPU holding the interpreter from the event loop.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import re
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, ThreadingWSGIServer
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from llmconn.model.reasons import Reason, Result

READY_STATUSES = ("True", "False", "Unknown")
_C = TypeVar("_C", bound=Collector)

# Probes run from milliseconds (loopback) to the whole timeout budget (10s by default).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

LAG_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

# A provider name is a registry key (a DNS label); anything else becomes "invalid" rather
# than being copied into a label, since the spec field is user input.
_PROVIDER = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
INVALID_PROVIDER = "invalid"

_RESULTS = frozenset(r.value for r in Result)
_REASONS = frozenset(r.value for r in Reason)


def _provider_label(provider: str) -> str:
    return provider if _PROVIDER.fullmatch(provider) else INVALID_PROVIDER


def _checked(value: str, allowed: frozenset[str] | tuple[str, ...], what: str) -> str:
    # These values come from enums in code: anything else is a bug, never user text.
    if value not in allowed:
        raise ValueError(f"unknown {what} label value {value!r}")
    return value


class Metrics:
    """The operator's metrics, in their own registry unless one is given."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # Every family (what tests and generate_latest read), and all but the per-connection
        # ones (what /metrics formats with prometheus_client; those it renders itself).
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._served = CollectorRegistry(auto_describe=True)
        self._validations = self._register(
            Counter(
                "llmconn_validations",
                "Validations finished, by provider, result and reason.",
                ["provider", "result", "reason"],
                registry=None,
            )
        )
        self._duration = self._register(
            Histogram(
                "llmconn_validation_duration_seconds",
                "Wall time of one validation (probe), by provider.",
                ["provider"],
                buckets=DURATION_BUCKETS,
                registry=None,
            )
        )
        self._series = _ConnectionSeries(self)  # ready and last validation, per connection
        self.registry.register(self._series)
        self._retirement = self._register(
            Gauge(
                "llmconn_model_retirement_timestamp_seconds",
                "Unix time the connection's model retires, where its provider announces it.",
                ["namespace", "name"],
                registry=None,
            )
        )
        self._retiring: set[tuple[str, str]] = set()  # connections with a retirement series
        self._in_flight = self._register(
            Gauge("llmconn_probes_in_flight", "Validations running now.", registry=None)
        )
        self._queue = self._register(
            Gauge("llmconn_queue_depth", "Validations due but not yet started.", registry=None)
        )
        self._lag = self._register(
            Histogram(
                "llmconn_schedule_lag_seconds",
                "How late validations start against their plan (queueing for a free worker).",
                buckets=LAG_BUCKETS,
                registry=None,
            )
        )
        self._connections = self._register(
            Gauge("llmconn_connections", "Connections known to this replica.", registry=None)
        )
        # What the budgets for the API server delay (controller/budget.py, writer.py).
        self._writes_delayed = self._register(
            Counter(
                "llmconn_status_writes_delayed",
                "Status writes that waited for their namespace's write budget, by namespace.",
                ["namespace"],
                registry=None,
            )
        )
        self._write_delay = self._register(
            Histogram(
                "llmconn_status_write_delay_seconds",
                "How long a delayed status write waited for its namespace's write budget.",
                buckets=LAG_BUCKETS,
                registry=None,
            )
        )
        self._events_posted = self._register(
            Counter(
                "llmconn_events_posted",
                "Events the operator posted, by type (Normal, Warning).",
                ["type"],
                registry=None,
            )
        )
        self._events_held = self._register(
            Counter(
                "llmconn_events_held",
                "Events held by a connection's Event budget and told in a later summary "
                "Event instead, by namespace.",
                ["namespace"],
                registry=None,
            )
        )
        # Each connection's row: the provider its series carry, its Ready status and the
        # time of its latest validation (None: not yet known).
        self._rows: dict[tuple[str, str], _Row] = {}
        self._rows_in: collections.Counter[str] = collections.Counter()  # rows per namespace
        self._lock = threading.Lock()  # guards _rows and the retirement series
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def _register(self, collector: _C) -> _C:
        self.registry.register(collector)
        self._served.register(collector)
        return collector

    def validation(self, provider: str, result: str, reason: str, seconds: float) -> None:
        provider = _provider_label(provider)
        self._validations.labels(
            provider, _checked(result, _RESULTS, "result"), _checked(reason, _REASONS, "reason")
        ).inc()
        self._duration.labels(provider).observe(seconds)

    def set_ready(self, namespace: str, name: str, provider: str, status: str) -> None:
        _checked(status, READY_STATUSES, "status")
        with self._lock:
            self._row(namespace, name, provider).ready = status

    def last_validation(self, namespace: str, name: str, provider: str, timestamp: float) -> None:
        with self._lock:
            self._row(namespace, name, provider).last = timestamp

    def model_retirement(self, namespace: str, name: str, timestamp: float | None) -> None:
        """The model's announced retirement (None: none announced, the series goes)."""
        with self._lock:
            if timestamp is not None:
                self._retirement.labels(namespace, name).set(timestamp)
                self._retiring.add((namespace, name))
            elif (namespace, name) in self._retiring:
                self._retiring.discard((namespace, name))
                self._retirement.remove(namespace, name)

    def forget(self, namespace: str, name: str) -> None:
        """A connection is gone: its series go, and its namespace's with its last one."""
        with self._lock:
            if self._rows.pop((namespace, name), None) is not None:
                self._rows_in[namespace] -= 1
            if (namespace, name) in self._retiring:
                self._retiring.discard((namespace, name))
                self._retirement.remove(namespace, name)
            if self._rows_in[namespace] <= 0:
                del self._rows_in[namespace]
                for by_namespace in (self._writes_delayed, self._events_held):
                    with contextlib.suppress(KeyError):  # none was counted
                        by_namespace.remove(namespace)

    def set_in_flight(self, n: int) -> None:
        self._in_flight.set(n)

    def set_queue_depth(self, n: int) -> None:
        self._queue.set(n)

    def schedule_lag(self, seconds: float) -> None:
        self._lag.observe(seconds)

    def set_connections(self, n: int) -> None:
        self._connections.set(n)

    def write_delayed(self, namespace: str, seconds: float) -> None:
        self._writes_delayed.labels(namespace).inc()
        self._write_delay.observe(seconds)

    def event_posted(self, type_: str) -> None:
        self._events_posted.labels(_checked(type_, ("Normal", "Warning"), "event type")).inc()

    def event_held(self, namespace: str) -> None:
        self._events_held.labels(namespace).inc()

    # All interfaces by default: in a pod, Prometheus scrapes through the pod IP.
    def serve(self, port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104
        """Expose the metrics over HTTP from a daemon thread; port 0 picks a free port."""
        if self._server is not None:
            raise RuntimeError("metrics server already running")

        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET

        self._server = make_server(addr, port, self._app, Server, handler_class=_Quiet)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def exposition(self) -> bytes:
        """The text /metrics serves: the same families and samples as generate_latest of
        `registry`, the per-connection ones from each row's kept lines."""
        with self._lock:
            rows = list(self._rows.items())
        ready, last = [], []
        for (namespace, name), row in rows:
            kept = row.kept
            # Read once: the loop may change the row meanwhile; the next scrape sees that.
            status, validated = row.ready, row.last
            if kept is None or kept[0] != status or kept[1] != validated:
                kept = row.kept = _render(namespace, name, row.provider, status, validated)
            ready.append(kept[2])
            last.append(kept[3])
        families = [generate_latest(self._served).decode()]
        for family, lines in zip(_ConnectionSeries.families(), (ready, last), strict=True):
            families.append(f"# HELP {family.name} {family.documentation}\n")
            families.append(f"# TYPE {family.name} gauge\n")
            families.extend(lines)
        return "".join(families).encode()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/favicon.ico":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b""]
        body = self.exposition()
        headers = [("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = gzip.compress(body, compresslevel=1)
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [body]

    @property
    def port(self) -> int | None:
        """The port the exposition server listens on, or None when not serving."""
        return None if self._server is None else int(self._server.server_port)

    def close(self) -> None:
        """Stop the exposition server, if any, and release its socket."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join()

    def _row(self, namespace: str, name: str, provider: str) -> _Row:
        """The connection's row (with the lock held); a new provider starts a new row, so
        the series under the old provider label go."""
        provider = _provider_label(provider)
        row = self._rows.get((namespace, name))
        if row is None:
            self._rows_in[namespace] += 1
        if row is None or row.provider != provider:
            row = self._rows[(namespace, name)] = _Row(provider)
        return row

    def connection_samples(self) -> list[tuple[str, str, str, str | None, float | None]]:
        """Each connection's (namespace, name, provider, ready, last), as of now."""
        with self._lock:
            return [(*key, row.provider, row.ready, row.last) for key, row in self._rows.items()]


@dataclass(slots=True)
class _Row:
    provider: str
    ready: str | None = None
    last: float | None = None
    # (ready, last) as rendered, then their exposition lines: ready's three, last's one.
    kept: tuple[str | None, float | None, str, str] | None = None


def _label(value: str) -> str:
    """A label value in the text format: backslash, newline and double quote escaped."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _value(value: float) -> str:
    """A sample value as prometheus_client writes it (Go's formatting: 1.7e+09, +Inf)."""
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


def _render(
    namespace: str, name: str, provider: str, ready: str | None, last: float | None
) -> tuple[str | None, float | None, str, str]:
    labels = f'namespace="{_label(namespace)}",name="{_label(name)}",provider="{_label(provider)}"'
    ready_lines = (
        "".join(
            f'llmconn_connection_ready{{{labels},status="{each}"}} {_value(float(each == ready))}\n'
            for each in READY_STATUSES
        )
        if ready is not None
        else ""
    )
    last_line = (
        f"llmconn_last_validation_timestamp_seconds{{{labels}}} {_value(last)}\n"
        if last is not None
        else ""
    )
    return ready, last, ready_lines, last_line


class _Quiet(WSGIRequestHandler):
    """No access log: scrapes every few seconds are not news."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ConnectionSeries(Collector):
    """The per-connection series, made at scrape time from one small row per connection.

    A labelled Gauge keeps a child object, a value and a lock per series: four series per
    connection came to a dozen objects each, which every collection of the garbage collector
    walked, and four lookups under locks per validation."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Metric]:
        yield from self.families()

    def collect(self) -> Iterator[Metric]:
        ready, last = self.families()
        for namespace, name, provider, status, validated in self._metrics.connection_samples():
            if status is not None:
                for each in READY_STATUSES:
                    ready.add_metric([namespace, name, provider, each], float(each == status))
            if validated is not None:
                last.add_metric([namespace, name, provider], validated)
        yield ready
        yield last

    @staticmethod
    def families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "llmconn_connection_ready",
                "Ready condition of each connection, one-hot over status True/False/Unknown.",
                labels=["namespace", "name", "provider", "status"],
            ),
            GaugeMetricFamily(
                "llmconn_last_validation_timestamp_seconds",
                "Unix time of each connection's latest validation.",
                labels=["namespace", "name", "provider"],
            ),
        )
