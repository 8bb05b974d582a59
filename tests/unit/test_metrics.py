"""The operator's Prometheus metrics, read back through the text exposition format."""

from __future__ import annotations

import gzip
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llmconn.controller.metrics import DURATION_BUCKETS, INVALID_PROVIDER, Metrics

Sample = tuple[str, dict[str, str], float]


def scrape(text: str) -> list[Sample]:
    return [
        (s.name, dict(s.labels), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def samples(metrics: Metrics) -> list[Sample]:
    return scrape(generate_latest(metrics.registry).decode())


def values(metrics: Metrics, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {frozenset(labels.items()): value for n, labels, value in samples(metrics) if n == name}


def key(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


@pytest.fixture
def metrics() -> Iterator[Metrics]:
    m = Metrics()
    yield m
    m.close()


def test_default_registry_is_private() -> None:
    a, b = Metrics(), Metrics()
    a.set_in_flight(3)
    assert a.registry is not b.registry
    assert values(b, "llmconn_probes_in_flight") == {key(): 0.0}


def test_given_registry_is_used() -> None:
    registry = CollectorRegistry()
    Metrics(registry).set_queue_depth(7)
    assert "llmconn_queue_depth 7.0" in generate_latest(registry).decode()


def test_validations_counted_by_provider_result_reason(metrics: Metrics) -> None:
    metrics.validation("openai", "success", "Validated", 0.12)
    metrics.validation("openai", "success", "Validated", 0.3)
    metrics.validation("openai", "failed", "InvalidAPIKey", 0.05)
    metrics.validation("anthropic", "unknown", "RateLimited", 0.02)
    assert values(metrics, "llmconn_validations_total") == {
        key(provider="openai", result="success", reason="Validated"): 2.0,
        key(provider="openai", result="failed", reason="InvalidAPIKey"): 1.0,
        key(provider="anthropic", result="unknown", reason="RateLimited"): 1.0,
    }


def test_duration_histogram_by_provider(metrics: Metrics) -> None:
    metrics.validation("openai", "success", "Validated", 0.12)
    metrics.validation("openai", "failed", "Timeout", 10.0)
    metrics.validation("gemini", "success", "Validated", 0.004)
    count = values(metrics, "llmconn_validation_duration_seconds_count")
    assert count == {key(provider="openai"): 2.0, key(provider="gemini"): 1.0}
    total = values(metrics, "llmconn_validation_duration_seconds_sum")
    assert total[key(provider="openai")] == pytest.approx(10.12)
    buckets = values(metrics, "llmconn_validation_duration_seconds_bucket")
    assert buckets[key(provider="openai", le="0.1")] == 0.0
    assert buckets[key(provider="openai", le="0.25")] == 1.0
    assert buckets[key(provider="openai", le="10.0")] == 2.0
    assert buckets[key(provider="gemini", le="0.005")] == 1.0
    assert len([k for k in buckets if ("provider", "gemini") in k]) == len(DURATION_BUCKETS) + 1


def test_ready_is_one_hot(metrics: Metrics) -> None:
    metrics.set_ready("agents", "deepseek-prod", "deepseek", "Unknown")
    metrics.set_ready("agents", "deepseek-prod", "deepseek", "True")
    assert values(metrics, "llmconn_connection_ready") == {
        key(namespace="agents", name="deepseek-prod", provider="deepseek", status="True"): 1.0,
        key(namespace="agents", name="deepseek-prod", provider="deepseek", status="False"): 0.0,
        key(namespace="agents", name="deepseek-prod", provider="deepseek", status="Unknown"): 0.0,
    }
    metrics.set_ready("agents", "deepseek-prod", "deepseek", "False")
    ready = values(metrics, "llmconn_connection_ready")
    assert [dict(k)["status"] for k, v in ready.items() if v == 1.0] == ["False"]


def test_last_validation_timestamp(metrics: Metrics) -> None:
    metrics.last_validation("agents", "a", "openai", 1_800_000_000.5)
    assert values(metrics, "llmconn_last_validation_timestamp_seconds") == {
        key(namespace="agents", name="a", provider="openai"): 1_800_000_000.5
    }


def test_forget_drops_every_series_of_that_connection_only(metrics: Metrics) -> None:
    for name in ("a", "b"):
        metrics.set_ready("agents", name, "openai", "True")
        metrics.last_validation("agents", name, "openai", 1.0)
    metrics.set_ready("other", "a", "openai", "False")
    metrics.validation("openai", "success", "Validated", 0.1)

    metrics.forget("agents", "a")

    ready = values(metrics, "llmconn_connection_ready")
    assert {(dict(k)["namespace"], dict(k)["name"]) for k in ready} == {
        ("agents", "b"),
        ("other", "a"),
    }
    assert len(ready) == 6
    last = values(metrics, "llmconn_last_validation_timestamp_seconds")
    assert last == {key(namespace="agents", name="b", provider="openai"): 1.0}
    # Aggregates are not per connection and stay.
    assert values(metrics, "llmconn_validations_total") != {}


def test_a_namespaces_series_go_with_its_last_connection(metrics: Metrics) -> None:
    """The by-namespace counters grow with namespaces, not with the objects tenants make and
    delete: a namespace's series go when its last connection does (and start again at 0)."""
    for name in ("a", "b"):
        metrics.set_ready("agents", name, "openai", "True")
    metrics.set_ready("other", "a", "openai", "True")
    for namespace in ("agents", "other"):
        metrics.write_delayed(namespace, 0.5)
        metrics.event_held(namespace)

    def namespaces(family: str) -> set[str]:
        return {dict(k)["namespace"] for k in values(metrics, family)}

    metrics.forget("agents", "a")
    assert namespaces("llmconn_status_writes_delayed_total") == {"agents", "other"}
    metrics.forget("agents", "b")
    assert namespaces("llmconn_status_writes_delayed_total") == {"other"}
    assert namespaces("llmconn_events_held_total") == {"other"}
    metrics.forget("agents", "b")  # again: harmless
    metrics.write_delayed("agents", 0.5)
    assert values(metrics, "llmconn_status_writes_delayed_total")[key(namespace="agents")] == 1.0


def test_forget_unknown_connection_is_harmless(metrics: Metrics) -> None:
    metrics.set_ready("agents", "a", "openai", "True")
    metrics.forget("agents", "never-seen")
    metrics.forget("agents", "a")
    metrics.forget("agents", "a")
    assert values(metrics, "llmconn_connection_ready") == {}


def test_provider_change_replaces_the_series(metrics: Metrics) -> None:
    metrics.set_ready("agents", "a", "openai", "True")
    metrics.last_validation("agents", "a", "openai", 1.0)
    metrics.set_ready("agents", "a", "openai-compatible", "Unknown")
    ready = values(metrics, "llmconn_connection_ready")
    assert {dict(k)["provider"] for k in ready} == {"openai-compatible"}
    assert values(metrics, "llmconn_last_validation_timestamp_seconds") == {}
    metrics.forget("agents", "a")
    assert values(metrics, "llmconn_connection_ready") == {}


def test_gauges_for_work_in_progress(metrics: Metrics) -> None:
    metrics.set_in_flight(4)
    metrics.set_queue_depth(12)
    metrics.set_connections(1000)
    metrics.set_in_flight(3)
    got = {n: v for n, labels, v in samples(metrics) if not labels}
    assert got["llmconn_probes_in_flight"] == 3.0
    assert got["llmconn_queue_depth"] == 12.0
    assert got["llmconn_connections"] == 1000.0


@pytest.mark.parametrize(
    ("result", "reason"),
    [("ok", "Validated"), ("failed", "invalid key sk-live-123"), ("success", "validated")],
)
def test_label_values_outside_the_closed_sets_are_refused(
    metrics: Metrics, result: str, reason: str
) -> None:
    with pytest.raises(ValueError, match="label value"):
        metrics.validation("openai", result, reason, 0.1)
    assert values(metrics, "llmconn_validations_total") == {}


def test_ready_status_outside_true_false_unknown_is_refused(metrics: Metrics) -> None:
    with pytest.raises(ValueError, match="status"):
        metrics.set_ready("agents", "a", "openai", "true")


def test_provider_that_is_not_a_name_never_reaches_a_label(metrics: Metrics) -> None:
    secret = "Bearer sk-THIS-IS-A-SECRET"
    metrics.validation(secret, "failed", "InvalidConfiguration", 0.0)
    metrics.set_ready("agents", "a", secret, "False")
    text = generate_latest(metrics.registry).decode()
    assert "SECRET" not in text
    assert values(metrics, "llmconn_validations_total") == {
        key(provider=INVALID_PROVIDER, result="failed", reason="InvalidConfiguration"): 1.0
    }


def test_label_names_are_the_documented_ones(metrics: Metrics) -> None:
    metrics.validation("openai", "success", "Validated", 0.1)
    metrics.set_ready("agents", "a", "openai", "True")
    metrics.last_validation("agents", "a", "openai", 1.0)
    names = {name for _, labels, _ in samples(metrics) for name in labels}
    assert names == {"namespace", "name", "provider", "status", "result", "reason", "le"}


def test_serve_exposes_the_registry_over_http(metrics: Metrics) -> None:
    metrics.set_ready("agents", "a", "openai", "True")
    metrics.serve(0, "127.0.0.1")
    assert metrics.port
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}/metrics") as resp:
        body = resp.read().decode()
    served = {(n, frozenset(labels.items())): v for n, labels, v in scrape(body)}
    ready = key(namespace="agents", name="a", provider="openai", status="True")
    assert served[("llmconn_connection_ready", ready)] == 1.0
    with pytest.raises(RuntimeError):
        metrics.serve(0, "127.0.0.1")
    metrics.close()
    assert metrics.port is None


def test_model_retirement_gauge_is_set_and_removed(metrics: Metrics) -> None:
    name = "llmconn_model_retirement_timestamp_seconds"
    metrics.model_retirement("ns", "a", 1_800_000_000.0)
    metrics.model_retirement("ns", "b", 1_900_000_000.0)
    assert values(metrics, name) == {
        key(namespace="ns", name="a"): 1_800_000_000.0,
        key(namespace="ns", name="b"): 1_900_000_000.0,
    }
    metrics.model_retirement("ns", "a", None)  # no longer announced
    metrics.model_retirement("ns", "c", None)  # never announced: harmless
    metrics.forget("ns", "b")
    assert values(metrics, name) == {}


# --- what /metrics serves: per-connection lines kept rendered ------------------------------


def families(text: str) -> dict[str, tuple[str, str, list[Sample]]]:
    return {
        f.name: (f.documentation, f.type, sorted(scrape_family(f), key=repr))
        for f in text_string_to_metric_families(text)
    }


def scrape_family(family: object) -> list[Sample]:
    return [(s.name, dict(s.labels), s.value) for s in family.samples]  # type: ignore[attr-defined]


def busy(metrics: Metrics) -> None:
    metrics.validation("openai", "success", "Validated", 0.2)
    metrics.set_in_flight(2)
    for i in range(5):
        metrics.set_ready("ns", f"c{i}", "openai", ("True", "False", "Unknown")[i % 3])
        metrics.last_validation("ns", f"c{i}", "openai", 1_700_000_000.5 + i)
    metrics.set_ready("ns", "not-yet", "anthropic", "Unknown")  # no validation time yet
    metrics.model_retirement("ns", "c1", 1_800_000_000.0)


def test_the_exposition_serves_what_prometheus_client_would(metrics: Metrics) -> None:
    busy(metrics)
    assert families(metrics.exposition().decode()) == families(
        generate_latest(metrics.registry).decode()
    )


def test_a_changed_row_is_rendered_again_and_a_forgotten_one_goes(metrics: Metrics) -> None:
    busy(metrics)
    metrics.exposition()  # every row's lines are kept now
    metrics.set_ready("ns", "c0", "openai", "False")
    metrics.last_validation("ns", "c0", "openai", 1_750_000_000.0)
    metrics.set_ready("ns", "c1", "gemini", "True")  # another provider: a new row
    metrics.forget("ns", "c2")
    served = families(metrics.exposition().decode())
    assert served == families(generate_latest(metrics.registry).decode())
    ready = {
        (s[1]["name"], s[1]["provider"], s[1]["status"]): s[2]
        for s in served["llmconn_connection_ready"][2]
    }
    assert ready[("c0", "openai", "False")] == 1.0 and ready[("c1", "gemini", "True")] == 1.0
    assert not any(name in ("c2",) for name, _, _ in ready)


def test_label_values_are_escaped_in_the_kept_lines(metrics: Metrics) -> None:
    # Names come from the API server, which allows none of these; the format still holds.
    metrics.set_ready('n"s', "a\\b\nc", "openai", "True")
    (served,) = [
        s
        for s in families(metrics.exposition().decode())["llmconn_connection_ready"][2]
        if s[1]["status"] == "True"
    ]
    assert served[1]["namespace"] == 'n"s' and served[1]["name"] == "a\\b\nc"


def test_served_over_http_with_gzip_when_asked(metrics: Metrics) -> None:
    busy(metrics)
    metrics.serve(0, "127.0.0.1")
    try:
        url = f"http://127.0.0.1:{metrics.port}/metrics"
        request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
        with urllib.request.urlopen(request) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            body = gzip.decompress(resp.read()).decode()
    finally:
        metrics.close()
    assert families(body) == families(generate_latest(metrics.registry).decode())
