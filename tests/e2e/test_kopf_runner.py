"""The operator's Kopf wiring run in process by Kopf's own test runner (`kopf.testing.KopfRunner`)
against the real control plane: Kopf watches the connection, the handler hands the event to
the engine, the verdict is written, and Kopf writes nothing else to the object. The API
server counts one watch of connections (Kopf's) and one of Secrets (the engine's, metadata
only) for the replica, and no other."""

from __future__ import annotations

import re
import secrets as pysecrets
from collections import Counter
from collections.abc import Iterator

import pytest
from kopf.testing import KopfRunner
from opkit import Api, ControlledProvider, condition, manifest, secret, wait_for

from servers.serve import serve

KEY = "sk-runner-" + pysecrets.token_hex(12)
_WATCHES = re.compile(
    r"^apiserver_longrunning_requests\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$", re.MULTILINE
)


def watches(cluster) -> Counter[str]:
    """The watches open at the API server, by resource (its own gauge, all clients)."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    found: Counter[str] = Counter()
    for match in _WATCHES.finditer(text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        if labels.get("verb") == "WATCH":
            found[labels.get("resource", "")] += int(float(match["value"]))
    return found


@pytest.fixture
def provider() -> Iterator[str]:
    p = ControlledProvider(keys={KEY})
    with serve(p.app()) as url:
        yield url + "/v1"


def test_kopf_runs_the_handlers_and_the_verdict_is_written(
    cluster, namespace, provider, monkeypatch
) -> None:
    api = Api(cluster)
    for name, value in cluster.env().items():
        monkeypatch.setenv(name, value)  # KUBECONFIG: Kopf and the engine log in from it
    monkeypatch.setenv("LLMCONN_NAMESPACE", namespace)  # the Secret watch's scope
    monkeypatch.setenv("LLMCONN_METRICS_PORT", "0")
    monkeypatch.setenv("LLMCONN_DEFAULT_INTERVAL", "1h")
    spec = {
        "provider": "openai-compatible",
        "endpoint": provider,
        "model": "gpt-4o",
        "apiKeySecretRef": {"name": "creds"},
    }
    cluster.kubectl("apply", "-f", "-", input=secret(namespace, "creds", {"apiKey": KEY}))
    args = ["run", "--standalone", "-n", namespace, "-m", "llmconn.controller.handlers"]
    before = watches(cluster)
    with KopfRunner(args, timeout=60) as runner:
        cluster.kubectl("apply", "-f", "-", input=manifest(namespace, "c", spec))

        def ready() -> dict | None:
            status = api.status(namespace, "c")
            return status if condition(status, "Ready").get("status") == "True" else None

        try:
            status = wait_for("the verdict written by the in-process operator", ready)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{runner.output[-3000:]}") from None
        assert status["reason"] == "Validated"
        obj = api.conn(namespace, "c")
        assert obj is not None
        opened = watches(cluster) - before
    assert runner.exception is None, runner.output[-3000:]
    assert runner.exit_code == 0, runner.output[-3000:]
    # Kopf wrote nothing to the object: no finalizer, no annotation of its own.
    assert not obj["metadata"].get("finalizers")
    assert not any("kopf" in k for k in obj["metadata"].get("annotations") or {})
    assert KEY not in runner.output
    # One watch per watched resource: Kopf's of the connections, the engine's of Secrets.
    assert opened == Counter({"llmconnections": 1, "secrets": 1}), opened
