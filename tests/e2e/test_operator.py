"""The operator on the real control plane: every trigger, the status contract, the one-write rule.

Most tests share one operator watching `shared-*` namespaces; tests that count writes, restart
the operator or change its options run their own operator on their own namespace.
"""

from __future__ import annotations

import itertools
import secrets as pysecrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opkit import (
    Api,
    ControlledProvider,
    OperatorProcess,
    condition,
    leaked,
    manifest,
    secret,
    wait_for,
)

from servers.serve import serve

GOOD_KEY = "sk-good-" + pysecrets.token_hex(12)
BAD_KEY = "sk-bad-" + pysecrets.token_hex(12)
ROTATED_KEY = "sk-rotated-" + pysecrets.token_hex(12)
ALL_KEYS = (GOOD_KEY, BAD_KEY, ROTATED_KEY)


@pytest.fixture(scope="module")
def provider() -> Iterator[tuple[ControlledProvider, str]]:
    p = ControlledProvider(keys={GOOD_KEY, ROTATED_KEY})
    with serve(p.app()) as url:
        yield p, url + "/v1"


@pytest.fixture
def own_provider() -> Iterator[tuple[ControlledProvider, str]]:
    """A provider for one test, for tests that count the requests it receives."""
    p = ControlledProvider(keys={GOOD_KEY, ROTATED_KEY})
    with serve(p.app()) as url:
        yield p, url + "/v1"


@pytest.fixture(autouse=True)
def _reset_provider(provider):
    p, _ = provider
    p.mode, p.delay, p.keys = "ok", 0.0, {GOOD_KEY, ROTATED_KEY}


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("operator-logs")


@pytest.fixture(scope="module")
def operator(cluster, logs) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster, logs, "-n", "shared-*", "--default-interval", "1h").start()
    yield op
    assert op.stop() == 0, op.log()[-3000:]


@pytest.fixture
def api(cluster) -> Api:
    return Api(cluster)


@pytest.fixture
def ns(cluster) -> Iterator[str]:
    name = cluster.create_namespace("shared")
    yield name
    # Namespaces never finish deleting here (no controller-manager): delete the connections,
    # so that their periodic validations stop and do not disturb later tests' counts.
    cluster.kubectl("delete", "llmconnections", "--all", "-n", name, "--wait=false")


def apply(cluster, *docs: str) -> None:
    cluster.kubectl("apply", "-f", "-", input="\n---\n".join(docs))


def spec(url: str, **extra) -> dict:
    return {
        "provider": "openai-compatible",
        "endpoint": url,
        "model": "gpt-4o",
        "apiKeySecretRef": {"name": "creds", "key": "apiKey"},
        **extra,
    }


def ready(api: Api, ns: str, name: str, want: str, reason: str | None = None, timeout: float = 30):
    def check():
        status = api.status(ns, name)
        cond = condition(status, "Ready")
        ok = cond.get("status") == want and (reason is None or status.get("reason") == reason)
        return status if ok else None

    return wait_for(f"{ns}/{name} Ready={want} reason={reason}", check, timeout=timeout)


def test_good_connection_becomes_ready_with_full_status(cluster, operator, provider, api, ns):
    _, url = provider
    apply(cluster, secret(ns, "creds", {"apiKey": GOOD_KEY}), manifest(ns, "good", spec(url)))
    status = ready(api, ns, "good", "True", "Validated")
    assert status["result"] == "success"
    assert isinstance(status["latencyMs"], int)
    assert status["observedGeneration"] == 1
    assert status["provider"] == "openai-compatible" and status["model"] == "gpt-4o"
    assert status["endpoint"] == url
    assert status["validation"] == {
        "type": "Model",
        "interval": "1h",
        "timeout": "10s",
        "failureThreshold": 3,
    }
    assert status["observedSecrets"][0]["name"] == "creds"
    assert status["observedSecrets"][0]["resourceVersion"]
    assert status["lastSuccessTime"] == status["lastValidationTime"]
    assert condition(status, "Stalled") == {} and condition(status, "Reconciling") == {}
    # kubectl wait works on the Ready condition
    cluster.kubectl(
        "wait", "-n", ns, "--for=condition=Ready", "llmconnection/good", "--timeout=20s"
    )
    out = cluster.kubectl("get", "llmconnections", "-n", ns).stdout
    assert "good" in out and "True" in out and "success" in out and "Validated" in out


def test_bad_key_fails_fast_and_stalls(cluster, operator, provider, api, ns):
    _, url = provider
    apply(cluster, secret(ns, "creds", {"apiKey": BAD_KEY}), manifest(ns, "bad", spec(url)))
    status = ready(api, ns, "bad", "False", "InvalidAPIKey")
    assert status["result"] == "failed" and status["httpStatus"] == 401
    assert status["code"] == "invalid_api_key"
    assert "Secret creds" in status["message"]
    assert condition(status, "Stalled").get("status") == "True"
    events = api.events(ns)
    assert any(e["reason"] == "ValidationFailed" for e in events)


def test_secret_rotation_flips_ready_without_touching_the_connection(
    cluster, operator, provider, api, ns
):
    _, url = provider
    apply(cluster, secret(ns, "creds", {"apiKey": BAD_KEY}), manifest(ns, "rot", spec(url)))
    ready(api, ns, "rot", "False", "InvalidAPIKey")
    before = api.conn(ns, "rot")
    apply(cluster, secret(ns, "creds", {"apiKey": ROTATED_KEY}))
    status = ready(api, ns, "rot", "True", "Validated")
    after = api.conn(ns, "rot")
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["metadata"].get("annotations") == before["metadata"].get("annotations")
    assert condition(status, "Stalled") == {}
    reasons = [e["reason"] for e in api.events(ns)]
    assert "Validated" in reasons and "ValidationFailed" in reasons


def test_secret_change_that_the_probe_does_not_use_does_not_revalidate(
    cluster, operator, own_provider, api, ns
):
    """Counted at the provider: `same` uses the Secret's apiKey, `other` its other key. A
    change of the other key must validate `other` and not `same`."""
    p, url = own_provider
    other = spec(url, apiKeySecretRef={"name": "creds", "key": "other"})
    apply(
        cluster,
        secret(ns, "creds", {"apiKey": GOOD_KEY, "other": BAD_KEY}),
        manifest(ns, "same", spec(url)),
        manifest(ns, "other", other),
    )
    ready(api, ns, "same", "True")
    ready(api, ns, "other", "False", "InvalidAPIKey")
    assert p.count() == 1  # the provider records only requests with a good key: `same`'s
    apply(cluster, secret(ns, "creds", {"apiKey": GOOD_KEY, "other": ROTATED_KEY}))
    # One Secret event reaches both connections at once: when `other` has its verdict on
    # the new data, a validation of `same` would have been started with it.
    ready(api, ns, "other", "True", "Validated")
    assert p.count() == 2  # `other`'s, now with a good key
    # A change `same` does use: its validation comes after any the previous event started,
    # so `same`'s count is exact once its verdict is about this version.
    apply(cluster, secret(ns, "creds", {"apiKey": ROTATED_KEY, "other": ROTATED_KEY}))
    version = cluster.kubectl(
        "get", "secret", "creds", "-n", ns, "-o", "jsonpath={.metadata.resourceVersion}"
    ).stdout
    wait_for(
        "`same` validated with the rotated key",
        lambda: (
            api.status(ns, "same").get("observedSecrets")
            == [{"name": "creds", "resourceVersion": version}]
        ),
    )
    ready(api, ns, "other", "True", "Validated")
    # `same`: the first and the rotation; `other`: the change of its key. Not `other` again
    # (its data did not change) and not `same` for the change of the other key.
    assert p.count() == 3


def test_secret_deleted_then_missing(cluster, operator, provider, api, ns):
    _, url = provider
    apply(cluster, secret(ns, "creds", {"apiKey": GOOD_KEY}), manifest(ns, "del", spec(url)))
    ready(api, ns, "del", "True")
    cluster.kubectl("delete", "secret", "-n", ns, "creds")
    status = ready(api, ns, "del", "False", "SecretNotFound")
    assert "creds" in status["message"]
    assert "latencyMs" not in status  # no probe ran


def test_missing_key_in_secret(cluster, operator, provider, api, ns):
    _, url = provider
    apply(cluster, secret(ns, "creds", {"other": GOOD_KEY}), manifest(ns, "nokey", spec(url)))
    status = ready(api, ns, "nokey", "False", "SecretKeyNotFound")
    assert "apiKey" in status["message"]


def test_secret_created_after_the_connection(cluster, operator, provider, api, ns):
    _, url = provider
    apply(cluster, manifest(ns, "late", spec(url)))
    status = ready(api, ns, "late", "False", "SecretNotFound")
    assert condition(status, "Stalled") == {}  # within the grace period
    apply(cluster, secret(ns, "creds", {"apiKey": GOOD_KEY}))
    ready(api, ns, "late", "True", "Validated")


def test_spec_change_revalidates_and_bumps_observed_generation(
    cluster, operator, provider, api, ns
):
    _, url = provider
    apply(cluster, secret(ns, "creds", {"apiKey": GOOD_KEY}), manifest(ns, "gen", spec(url)))
    ready(api, ns, "gen", "True")
    apply(cluster, manifest(ns, "gen", spec(url, model="gpt-missing")))
    status = ready(api, ns, "gen", "False", "ModelNotFound")
    assert status["observedGeneration"] == 2
    assert condition(status, "Ready")["observedGeneration"] == 2
    assert status["model"] == "gpt-missing"


def test_annotation_requests_a_validation_and_is_echoed(cluster, operator, provider, api, ns):
    _, url = provider
    apply(cluster, secret(ns, "creds", {"apiKey": GOOD_KEY}), manifest(ns, "ann", spec(url)))
    first = ready(api, ns, "ann", "True")["lastValidationTime"]
    cluster.kubectl(
        "annotate",
        "-n",
        ns,
        "llmconnection/ann",
        "llmconn.dev/validate-requested-at=req-1",
        "--overwrite",
    )
    status = wait_for(
        "lastHandledRequestedAt",
        lambda: (s := api.status(ns, "ann")).get("lastHandledRequestedAt") == "req-1" and s,
    )
    assert status["lastValidationTime"] != first
    assert status["observedGeneration"] == 1  # an annotation is not a spec change


def test_interval_revalidates(cluster, operator, provider, api, ns):
    _, url = provider
    s = spec(url, validation={"interval": "1s"})
    apply(cluster, secret(ns, "creds", {"apiKey": GOOD_KEY}), manifest(ns, "tick", s))
    seen: set[str] = set()

    def three_validations():
        seen.add(api.status(ns, "tick").get("lastValidationTime", ""))
        return len(seen - {""}) >= 3

    wait_for("three periodic validations", three_validations, timeout=30, every=0.2)
    assert api.status(ns, "tick")["validation"]["interval"] == "1s"


def test_flap_damping(cluster, operator, provider, api, ns):
    p, url = provider
    s = spec(url, validation={"interval": "1s", "failureThreshold": 3})
    apply(cluster, secret(ns, "creds", {"apiKey": GOOD_KEY}), manifest(ns, "flap", s))
    ready(api, ns, "flap", "True")
    p.mode = "unavailable"
    damped = wait_for(
        "a tolerated failure",
        lambda: (st := api.status(ns, "flap")).get("reason") == "ProviderUnavailable" and st,
    )
    assert condition(damped, "Ready")["status"] == "True"
    assert "tolerated" in condition(damped, "Ready")["message"]
    status = ready(api, ns, "flap", "False", "ProviderUnavailable")
    assert status["consecutiveFailures"] >= 3
    assert condition(status, "Stalled") == {}  # transient: not for a human
    p.mode = "ok"
    ready(api, ns, "flap", "True", "Validated")


def test_retry_after_is_honoured(cluster, operator, own_provider, api, ns):
    """At a 1s interval, each 429 with Retry-After: 3 holds the next probe back for 3 seconds
    after the provider answered, and the next probe does come."""
    p, url = own_provider
    p.retry_after = 3
    s = spec(url, validation={"interval": "1s"})
    apply(cluster, secret(ns, "creds", {"apiKey": GOOD_KEY}), manifest(ns, "rl", s))
    ready(api, ns, "rl", "True")
    p.mode = "ratelimit"
    wait_for("RateLimited", lambda: api.status(ns, "rl").get("reason") == "RateLimited")
    assert api.status(ns, "rl")["result"] == "unknown"
    first_429 = p.count()
    wait_for("two more probes", lambda: p.count() >= first_429 + 2, timeout=30)
    # The provider's clock (time.monotonic, shared by the processes on this machine): each
    # request was answered 429 with Retry-After: 3, so the next one waits at least 3 s.
    limited = [when for when, _ in p.hits[first_429 - 1 :]]
    gaps = [later - earlier for earlier, later in itertools.pairwise(limited)]
    assert all(gap >= p.retry_after for gap in gaps), gaps


def test_suspend_stops_validations(cluster, operator, provider, api, ns):
    _, url = provider
    s = spec(url, validation={"interval": "1s"})
    apply(cluster, secret(ns, "creds", {"apiKey": GOOD_KEY}), manifest(ns, "sus", s))
    ready(api, ns, "sus", "True")
    apply(cluster, manifest(ns, "sus", {**s, "suspend": True}))
    status = ready(api, ns, "sus", "Unknown")
    assert condition(status, "Ready")["reason"] == "Suspended"
    before = status["lastValidationTime"]
    # Evidence that the operator sees the suspended connection and chooses not to validate
    # it: a spec change while suspended is acknowledged (observedGeneration moves, Suspended
    # stays), and in all that time no validation ran (1 s interval).
    generation = api.conn(ns, "sus")["metadata"]["generation"]
    apply(cluster, manifest(ns, "sus", {**s, "suspend": True, "model": "gpt-4o-mini"}))
    status = wait_for(
        "the change acknowledged while suspended",
        lambda: (st := api.status(ns, "sus")).get("observedGeneration", 0) > generation and st,
    )
    assert condition(status, "Ready")["reason"] == "Suspended"
    assert status["lastValidationTime"] == before
    apply(cluster, manifest(ns, "sus", s))
    ready(api, ns, "sus", "True", "Validated")


def test_deleted_mid_probe_is_harmless(cluster, operator, own_provider, api, ns):
    p, url = own_provider
    p.delay = 2.0
    apply(cluster, secret(ns, "creds", {"apiKey": GOOD_KEY}), manifest(ns, "gone", spec(url)))
    wait_for("the probe to start", lambda: p.count(time.monotonic() - 1.5) > 0 or None, timeout=10)
    cluster.kubectl("delete", "-n", ns, "llmconnection/gone")
    time.sleep(2.5)
    p.delay = 0
    assert operator.healthy()
    apply(cluster, manifest(ns, "after", spec(url)))
    ready(api, ns, "after", "True")
    assert "Traceback" not in operator.log()


# --- tests with an operator of their own ------------------------------------------------


def solo(cluster, logs, *args: str) -> tuple[OperatorProcess, str]:
    ns = cluster.create_namespace("solo")  # no other operator watches solo-* namespaces
    return OperatorProcess(cluster, logs, "-n", ns, *args).start(), ns


def test_one_write_per_validation(cluster, logs, provider, api):
    _, url = provider
    op, ns = solo(cluster, logs, "--default-interval", "1h")
    try:
        status_patches = lambda: cluster.apiserver_metrics().total(  # noqa: E731
            resource="llmconnections", subresource="status", verb="PATCH"
        )
        object_writes = lambda: sum(  # noqa: E731
            cluster.apiserver_metrics().total(resource="llmconnections", subresource="", verb=v)
            for v in ("PATCH", "PUT", "UPDATE", "APPLY")
        )
        apply(cluster, secret(ns, "creds", {"apiKey": GOOD_KEY}))
        w0 = status_patches()
        n = 5
        apply(cluster, *(manifest(ns, f"c{i}", spec(url)) for i in range(n)))
        for i in range(n):
            ready(api, ns, f"c{i}", "True")
        time.sleep(1)
        creation = status_patches() - w0
        assert n <= creation <= 2 * n  # at most two writes per new connection
        # later validations: exactly one write each
        w1, v1 = status_patches(), op.validations()
        for i in range(n):
            cluster.kubectl(
                "annotate",
                "-n",
                ns,
                f"llmconnection/c{i}",
                f"llmconn.dev/validate-requested-at=r{i}",
            )
        o1 = object_writes()  # the test's own annotations are object PATCHes: count from here
        wait_for("five more validations", lambda: op.validations() >= v1 + n)
        time.sleep(1)  # a validation triggered by its own write would show up here
        assert op.validations() == v1 + n
        assert status_patches() - w1 == n
        assert object_writes() == o1  # Kopf wrote no annotations, finalizers or progress
        objs = [api.conn(ns, f"c{i}") for i in range(n)]
        for obj in objs:
            assert not obj["metadata"].get("finalizers")
            assert not any(k.startswith("kopf.") for k in obj["metadata"].get("annotations", {}))
    finally:
        assert op.stop() == 0


def test_restart_resumes_without_a_probe_storm(cluster, logs, own_provider, api):
    p, url = own_provider
    op, ns = solo(cluster, logs, "--default-interval", "1h")
    n = 10
    try:
        apply(
            cluster,
            secret(ns, "creds", {"apiKey": GOOD_KEY}),
            *(manifest(ns, f"r{i}", spec(url)) for i in range(n)),
        )
        for i in range(n):
            ready(api, ns, f"r{i}", "True")
    finally:
        assert op.stop() == 0
    stamps = {i: api.status(ns, f"r{i}")["lastValidationTime"] for i in range(n)}
    since = time.monotonic()
    op2 = OperatorProcess(cluster, logs, "-n", ns, "--default-interval", "1h").start()
    try:
        time.sleep(4)
        assert p.count(since) == 0  # validated minutes ago, due in an hour: nothing to do
        assert {i: api.status(ns, f"r{i}")["lastValidationTime"] for i in range(n)} == stamps
        # but it is watching: a spec change is handled at once
        apply(cluster, manifest(ns, "r0", spec(url, model="nope")))
        ready(api, ns, "r0", "False", "ModelNotFound")
    finally:
        assert op2.stop() == 0


def test_missing_secret_grace_period_then_stalled(cluster, logs, provider, api):
    _, url = provider
    op, ns = solo(cluster, logs, "--missing-secret-grace", "3s")
    try:
        apply(cluster, manifest(ns, "orphan", spec(url)))
        status = ready(api, ns, "orphan", "False", "SecretNotFound")
        assert condition(status, "Stalled") == {}
        status = wait_for(
            "Stalled after the grace period",
            lambda: (
                condition(s := api.status(ns, "orphan"), "Stalled").get("status") == "True" and s
            ),
            timeout=20,
        )
        assert condition(status, "Stalled")["reason"] == "SecretNotFound"
    finally:
        assert op.stop() == 0


def test_inference_can_be_forbidden(cluster, logs, provider, api):
    _, url = provider
    op, ns = solo(cluster, logs, "--no-inference")
    try:
        s = spec(url, validation={"type": "Inference"})
        apply(cluster, secret(ns, "creds", {"apiKey": GOOD_KEY}), manifest(ns, "inf", s))
        status = ready(api, ns, "inf", "False", "InvalidConfiguration")
        assert "Inference" in status["message"]
    finally:
        assert op.stop() == 0


def test_kubectl_wait_times_out_on_a_broken_connection(cluster, operator, provider, ns):
    _, url = provider
    apply(cluster, secret(ns, "creds", {"apiKey": BAD_KEY}), manifest(ns, "w", spec(url)))
    result = cluster.kubectl(
        "wait", "-n", ns, "--for=condition=Ready", "llmconnection/w", "--timeout=3s", check=False
    )
    assert result.returncode != 0


def test_keys_never_leak(cluster, operator, provider, api, ns, logs):
    """Every key validated here, good, bad and rotated, is in no status, Event, metric or log
    line (at debug level), not even a piece of it; other tests' material is scanned too."""
    _, url = provider
    apply(
        cluster,
        secret(ns, "good", {"apiKey": GOOD_KEY}),
        secret(ns, "creds", {"apiKey": BAD_KEY}),
        manifest(ns, "leak-good", spec(url, apiKeySecretRef={"name": "good", "key": "apiKey"})),
        manifest(ns, "leak", spec(url)),
    )
    ready(api, ns, "leak", "False", "InvalidAPIKey")
    ready(api, ns, "leak-good", "True", "Validated")
    apply(cluster, secret(ns, "creds", {"apiKey": ROTATED_KEY}))
    ready(api, ns, "leak", "True", "Validated")
    everything = cluster.kubectl("get", "llmconnections,events", "-A", "-o", "json").stdout
    everything += operator.metrics()
    everything += "".join(f.read_text(errors="replace") for f in logs.glob("*.log"))
    assert ns in everything and "InvalidAPIKey" in everything  # the scan sees this test's output
    assert leaked(ALL_KEYS, everything) == []
