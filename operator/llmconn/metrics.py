"""Prometheus metrics of the operator: validations, readiness per connection, work in progress.

Labels are limited to namespace, name, provider, result, reason and status: names come from
the API server, the rest from closed sets, so no secret value can reach a label.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llmconn.reasons import Reason, Result

READY_STATUSES = ("True", "False", "Unknown")

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
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._validations = Counter(
            "llmconn_validations",
            "Validations finished, by provider, result and reason.",
            ["provider", "result", "reason"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "llmconn_validation_duration_seconds",
            "Wall time of one validation (probe), by provider.",
            ["provider"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._series = _ConnectionSeries(self)  # ready and last validation, per connection
        self.registry.register(self._series)
        self._retirement = Gauge(
            "llmconn_model_retirement_timestamp_seconds",
            "Unix time the connection's model retires, where its provider announces it.",
            ["namespace", "name"],
            registry=self.registry,
        )
        self._retiring: set[tuple[str, str]] = set()  # connections with a retirement series
        self._in_flight = Gauge(
            "llmconn_probes_in_flight",
            "Validations running now.",
            registry=self.registry,
        )
        self._queue = Gauge(
            "llmconn_queue_depth",
            "Validations due but not yet started.",
            registry=self.registry,
        )
        self._lag = Histogram(
            "llmconn_schedule_lag_seconds",
            "How late validations start against their plan (queueing for a free worker).",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self._connections = Gauge(
            "llmconn_connections",
            "Connections known to this replica.",
            registry=self.registry,
        )
        # Each connection's row: the provider its series carry, its Ready status and the
        # time of its latest validation (None: not yet known).
        self._rows: dict[tuple[str, str], _Row] = {}
        self._lock = threading.Lock()  # guards _rows and the retirement series
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

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
        with self._lock:
            self._rows.pop((namespace, name), None)
            if (namespace, name) in self._retiring:
                self._retiring.discard((namespace, name))
                self._retirement.remove(namespace, name)

    def set_in_flight(self, n: int) -> None:
        self._in_flight.set(n)

    def set_queue_depth(self, n: int) -> None:
        self._queue.set(n)

    def schedule_lag(self, seconds: float) -> None:
        self._lag.observe(seconds)

    def set_connections(self, n: int) -> None:
        self._connections.set(n)

    # All interfaces by default: in a pod, Prometheus scrapes through the pod IP.
    def serve(self, port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104
        """Expose the registry over HTTP from a daemon thread; port 0 picks a free port."""
        if self._server is not None:
            raise RuntimeError("metrics server already running")
        self._server, self._thread = start_http_server(port, addr, registry=self.registry)

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


class _ConnectionSeries(Collector):
    """The per-connection series, made at scrape time from one small row per connection.

    A labelled Gauge keeps a child object, a value and a lock per series: four series per
    connection came to a dozen objects each, which every collection of the garbage collector
    walked, and four lookups under locks per validation."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        ready, last = self._families()
        for namespace, name, provider, status, validated in self._metrics.connection_samples():
            if status is not None:
                for each in READY_STATUSES:
                    ready.add_metric([namespace, name, provider, each], float(each == status))
            if validated is not None:
                last.add_metric([namespace, name, provider], validated)
        yield ready
        yield last

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
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
