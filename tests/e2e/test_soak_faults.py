"""`make soak` in small: 50 connections validating every 3 seconds through the operator killed
mid-probe (SIGKILL while the provider holds its probes, then started again) and a provider
that resets connections, stalls past the validation timeout, and flips between good and bad
answers.

After each fault every connection must get a fresh and correct status, with no status older
than the one before, no duplicate Event, no write storm and no exit of the operator's own
(tests/soakkit.py defines each). How soon is printed, not asserted: `make soak` measures it
at 1,000 connections. The faults leave the control plane alone, so the session's serves.
"""

from __future__ import annotations

import math
import secrets as pysecrets
import signal
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
from opkit import OperatorProcess, leaked, wait_for

from controlplane.cluster import ControlPlane
from servers.faulty import FaultyProvider, serving
from soakkit import Harness, StatusLog, Verdict, status_log

CONNECTIONS = 50
INTERVAL = "3s"
TIMEOUT = "1s"  # the provider's stall outlasts it
FAULT_SECONDS = 4.0
SLOW = 1.0  # seconds per answer while the operator is killed
WAIT = 60.0  # seconds every connection has to be fresh again (a wait, not a measurement)
KEY = "sk-soak-" + pysecrets.token_hex(12)
NAMES = [f"c{i:02d}" for i in range(CONNECTIONS)]


@dataclass
class Load:
    cluster: ControlPlane
    namespace: str
    logs: Path
    provider: FaultyProvider
    operator: OperatorProcess
    log: StatusLog
    harness: Harness = field(init=False)
    operator_logs: list[str] = field(default_factory=list)

    def restart(self) -> float:
        """Start the operator again; returns the wall time it was started."""
        started = time.time()
        self.operator = OperatorProcess(self.cluster, self.logs, "-n", self.namespace).start()
        return started

    def exits(self) -> int:
        """1 when the running operator has exited on its own."""
        proc = self.operator.proc
        return int(proc is None or proc.poll() is not None)

    def writes(self) -> tuple[dict[str, int], int]:
        """Status writes to this namespace's connections (exact, from the audit log) and the
        running operator's validations."""
        ok = self.cluster.writes(self.namespace, subresource="status")
        return {"2xx": ok}, self.operator.validations()

    def run(self, fault: str, inject: Any) -> Verdict:
        verdict = self.harness.run(fault, fault, inject, deadline_s=math.inf, wait_s=WAIT)
        print(
            f"\n{fault}: every status fresh {verdict.recovery_s}s after the fault's end "
            f"(first {verdict.first_fresh_s}s); events {verdict.events}; writes "
            f"{verdict.writes['per_validation']} per validation; {verdict.extra}"
        )
        return verdict


@pytest.fixture(scope="module")
def load(cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Load]:
    ns = cluster.create_namespace("soak")
    logs = tmp_path_factory.mktemp("soak-logs")
    provider = FaultyProvider(key=KEY)
    client_args = {
        "base_url": cluster.server,
        "headers": {"Authorization": f"Bearer {cluster.token}"},
        "verify": ssl.create_default_context(cafile=str(cluster.ca_file)),
    }
    with (
        serving(provider) as url,
        httpx2.Client(**client_args, timeout=30) as api,
        status_log(client_args, ns) as log,
    ):
        api.post(
            f"/api/v1/namespaces/{ns}/secrets",
            json={"metadata": {"name": "creds"}, "stringData": {"apiKey": KEY}},
        ).raise_for_status()
        operator = OperatorProcess(cluster, logs, "-n", ns).start()
        load = Load(cluster, ns, logs, provider, operator, log)
        load.harness = Harness(
            api=api,
            namespace=ns,
            log=log,
            names=NAMES,
            writes=load.writes,
            boundary=32,  # the operator's default --concurrency
            operator_exits=load.exits,
            healthy=lambda: load.operator.healthy(),
            extra=lambda: {"provider": dict(provider.counts)},
            settle=2.0,
        )
        for name in NAMES:
            body = {
                "apiVersion": "llmconn.dev/v1alpha1",
                "kind": "LLMConnection",
                "metadata": {"name": name},
                "spec": {
                    "provider": "openai-compatible",
                    "endpoint": url + "/v1",
                    "model": "gpt-4o",
                    "apiKeySecretRef": {"name": "creds"},
                    "validation": {"interval": INTERVAL, "timeout": TIMEOUT},
                },
            }
            path = f"/apis/llmconn.dev/v1alpha1/namespaces/{ns}/llmconnections"
            api.post(path, json=body).raise_for_status()

        def all_ready() -> bool:
            current = log.current()
            return all(n in current and current[n].fresh_and_right for n in NAMES)

        wait_for("every connection validated", all_ready, timeout=WAIT)
        try:
            yield load
        finally:
            load.operator.stop()
            load.operator_logs.append(load.operator.log())
            assert not leaked([KEY], "\n".join(load.operator_logs))
    cluster.delete_namespace(ns)


def test_the_operator_killed_mid_probe_recovers_every_status(load: Load) -> None:
    def inject() -> tuple[float, dict[str, Any]]:
        load.provider.switch("slow", SLOW)
        wait_for("probes held at the provider", lambda: load.provider.held >= 2, timeout=WAIT)
        held = load.provider.held
        assert load.operator.stop(signal.SIGKILL) == -signal.SIGKILL
        load.operator_logs.append(load.operator.log())
        load.provider.switch("ok")
        return load.restart(), {"probes_in_flight_at_kill": held}

    verdict = load.run("operator kill -9", inject)
    assert verdict.extra["probes_in_flight_at_kill"] >= 2
    assert verdict.failures == [], verdict.as_dict()


@pytest.mark.parametrize("mode", ["reset", "stall", "flip"])
def test_a_misbehaving_provider_is_survived_and_every_status_recovers(
    load: Load, mode: str
) -> None:
    counted = "bad" if mode == "flip" else mode  # the provider's count of misbehaviours

    def inject() -> tuple[float, dict[str, Any]]:
        before = load.provider.counts[counted]
        load.provider.switch(mode)
        time.sleep(FAULT_SECONDS)
        load.provider.switch("ok")
        return time.time(), {"misbehaved": load.provider.counts[counted] - before}

    verdict = load.run(f"provider {mode}", inject)
    assert verdict.extra["misbehaved"] > 0  # the fault did happen to probes
    if mode == "flip":  # Ready did flip, so the Event check had Events to check
        assert verdict.transitions.get("ValidationFailed", 0) > 0
        assert verdict.events.get("ValidationFailed", 0) > 0
    assert verdict.failures == [], verdict.as_dict()
