"""Redaction costs less than the secret (issue 23, item 2).

The issue's case: an API key and 16 header values of 16,000 bytes made a redactor in 23 s on
the event loop and +298 MiB, and the log filter rebuilt one redactor from every tenant's
values in flight whenever a validation started or ended. Now the sum of one connection's
values is capped (tests/security/test_tenant_limits.py), a value's forms are made once while
it is cached, long values' forms are indexed sparsely, large values are prepared in a worker
thread, and the log filter only lists the parts of the values in flight.
"""

from __future__ import annotations

import json
import secrets
import threading
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from llmconn.model import limits, logs
from llmconn.model import redact as redact_mod
from llmconn.model.redact import MARKER, WINDOW, Redactor
from llmconn.model.verdict import Defaults, SecretData
from llmconn.net.egress import EgressPolicy
from llmconn.net.pool import ClientPool
from llmconn.probes import parse_spec
from llmconn.validation.validate import validate
from netkit import loopback_only


@pytest.fixture
def forms_made(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str]]]:
    """Each value whose forms were made, with the thread that made them."""
    made: list[tuple[str, str]] = []
    real = redact_mod._forms

    def counting(value: str) -> Any:
        made.append((value, threading.current_thread().name))
        return real(value)

    monkeypatch.setattr(redact_mod, "_forms", counting)
    with redact_mod._LOCK:
        redact_mod._CACHE.clear()
        redact_mod._CACHE_SIZE[0] = 0
    yield made


def value(n: int) -> str:
    return secrets.token_urlsafe(n)[:n]


def test_a_values_forms_are_made_once_not_per_verdict(forms_made: list[tuple[str, str]]) -> None:
    key = value(64)
    for _ in range(3):
        assert Redactor([key]).text(f"echo {key}") == f"echo {MARKER}"
    assert [v for v, _ in forms_made] == [key]


def test_the_log_filter_remakes_no_forms_when_validations_start_and_end(
    forms_made: list[tuple[str, str]],
) -> None:
    """Old: every change of the values in flight rebuilt one redactor from all of them."""
    mine, others = value(2000), [value(2000) for _ in range(5)]
    with logs.in_use([mine]):
        assert logs.redact(mine) == MARKER
        for other in others:  # other tenants' validations start and end
            with logs.in_use([other]):
                assert logs.redact(f"{mine} {other}") == f"{MARKER} {MARKER}"
            assert logs.redact(mine) == MARKER
    assert sorted(v for v, _ in forms_made) == sorted([mine, *others])


def test_long_values_cost_memory_linear_and_small() -> None:
    """The cap's worth of values (32 KiB together): 43 MiB of windows before, now a sparse
    index of a sixth of the pieces. A bound on memory, not on time."""
    values = [value(limits.MAX_CONNECTION_SECRET_BYTES // 2) for _ in range(2)]
    with redact_mod._LOCK:
        redact_mod._CACHE.clear()
        redact_mod._CACHE_SIZE[0] = 0
    tracemalloc.start()
    try:
        redactor = Redactor(values)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 * 1024 * 1024
    assert redactor.text(f"x {values[1][500:600]} y") == f"x {MARKER} y"


@pytest.mark.parametrize("seed", range(20))
def test_the_sparse_index_finds_the_runs_every_window_would(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against the window-by-window search on the same forms: the same text comes out."""
    import random

    rng = random.Random(seed)
    secret = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789-_") for _ in range(600))
    forms = [redact_mod._fold(f) for f in redact_mod._forms(secret)]
    pieces = []
    for _ in range(30):
        form = rng.choice(forms)
        size = rng.randint(WINDOW - 3, WINDOW + 20)
        at = rng.randint(0, max(0, len(form) - size))
        pieces.append(form[at : at + size])
        pieces.append(rng.choice([" ", "..", "::", "A", ""]))
    text = "".join(pieces)

    def redacted() -> str:
        with redact_mod._LOCK:
            redact_mod._CACHE.clear()
            redact_mod._CACHE_SIZE[0] = 0
        return Redactor([secret]).text(text)

    sparse = redacted()
    monkeypatch.setattr(redact_mod, "SEARCHED", 10**9)  # every window, searched
    assert sparse == redacted()


@pytest.fixture
async def pool() -> AsyncIterator[ClientPool]:
    clients = ClientPool(EgressPolicy(), resolver=loopback_only, proxies={})
    yield clients
    await clients.aclose()


class Secrets:
    def __init__(self, data: dict[str, bytes]) -> None:
        self.data = data

    async def get(self, name: str) -> SecretData | None:
        return SecretData(self.data, "1") if name == "creds" else None


async def test_a_large_values_forms_are_made_off_the_event_loop(
    pool: ClientPool, forms_made: list[tuple[str, str]]
) -> None:
    big = value(12_000)
    spec = parse_spec(
        {
            "provider": "openai",
            "endpoint": "http://127.0.0.1:9",
            "apiKeySecretRef": {"name": "creds", "key": "apiKey"},
            "headersFromSecret": [
                {"name": "X-Big", "secretKeyRef": {"name": "creds", "key": "big"}}
            ],
            "validation": {"timeout": "2s"},
        }
    )
    data = {"apiKey": b"sk-0123456789abcdef", "big": big.encode()}
    verdict = await validate(spec, Secrets(data), pool, Defaults())
    assert big[:WINDOW] not in json.dumps([verdict.message, dict(verdict.details)])
    threads = {thread for v, thread in forms_made if v == big}
    assert threads and threading.main_thread().name not in threads
