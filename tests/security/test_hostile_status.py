"""A provider that answers with megabytes: the status stays small whatever it sends.

The answers come from a loopback server; the status is computed the way the operator
computes it (validate, then status.next_status), and checked against the limits the CRD's
status schema declares (tests/e2e/test_security.py writes one to a real API server).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmconn.model import status as st
from llmconn.model.verdict import Defaults, SecretData
from llmconn.net.egress import EgressPolicy
from llmconn.net.pool import ClientPool
from llmconn.probes import parse_spec
from llmconn.validation.validate import validate
from netkit import loopback_only
from servers.misbehaving import RawServer, answer

CRD = Path(__file__).resolve().parents[2] / "crds" / "llmconnections.yaml"

KEY = "sk-hostile-0123456789abcdefghij"


class OneSecret:
    async def get(self, name: str) -> SecretData | None:
        return SecretData({"apiKey": KEY.encode()}, resource_version="7")


def hostile_bodies() -> dict[str, tuple[int, str, dict[str, str]]]:
    big = "A" * 1_000_000
    many_headers = {f"x-ratelimit-{'k' * 100}-{i}": "9" * 60 for i in range(150)}
    return {
        "megabyte error message": (
            400,
            json.dumps({"error": {"message": big, "type": "x", "code": "C" * 40_000}}),
            {"x-request-id": "r" * 10_000},
        ),
        "150 headroom headers": (
            429,
            json.dumps({"error": {"message": "slow down " * 300, "code": "rate_limit"}}),
            many_headers,
        ),
        "non-ASCII message (4 bytes a character)": (
            500,
            json.dumps({"error": {"message": "\U0001f600" * 200_000}}, ensure_ascii=False),
            {},
        ),
        "the key echoed at the cut": (
            401,
            json.dumps({"error": {"message": "x" * 4090 + KEY}}),
            {},
        ),
    }


def status_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema["properties"]["status"]


def check_against(schema: Mapping[str, Any], value: Any, where: str = "status") -> None:
    """The CRD's length, item and property limits (what the API server would enforce)."""
    if isinstance(value, str):
        assert len(value) <= schema.get("maxLength", 1 << 30), where
    elif isinstance(value, list):
        assert len(value) <= schema.get("maxItems", 1 << 30), where
        for item in value:
            check_against(schema.get("items", {}), item, where + "[]")
    elif isinstance(value, dict):
        assert len(value) <= schema.get("maxProperties", 1 << 30), where
        props = schema.get("properties")
        for key, item in value.items():
            sub = props.get(key, {}) if props else schema.get("additionalProperties", {})
            assert props is None or key in props, f"{where}.{key} is not in the schema"
            check_against(sub if isinstance(sub, dict) else {}, item, f"{where}.{key}")


@pytest.mark.parametrize("case", list(hostile_bodies()))
async def test_a_hostile_answer_yields_a_small_status(case: str) -> None:
    code, body, headers = hostile_bodies()[case]
    async with RawServer(answer(code, body, headers=headers)) as server:
        spec = parse_spec(
            {
                "provider": "openai",
                "endpoint": server.url + "/v1",
                "model": "gpt-4o",
                "apiKeySecretRef": {"name": "k"},
            }
        )
        pool = ClientPool(EgressPolicy(), resolver=loopback_only, proxies={})
        try:
            verdict = await validate(spec, OneSecret(), pool, Defaults())
        finally:
            await pool.aclose()
    status = st.next_status(
        {}, verdict, generation=1, requested_at="x" * 5000, secret_grace_over=True
    )
    assert st.size(status) <= st.MAX_STATUS_BYTES
    check_against(status_schema(), status)
    text = json.dumps(status)
    assert KEY not in text and KEY[:12] not in text
    assert len(status["message"]) <= st.MAX_MESSAGE
    assert len(status.get("details", {})) <= st.MAX_DETAILS


def test_bounded_shrinks_any_status_under_the_limit() -> None:
    status: dict[str, Any] = {
        "message": "m" * st.MAX_MESSAGE,
        "details": {f"k{i:03d}": "v" * st.MAX_DETAIL_VALUE for i in range(st.MAX_DETAILS)},
        "conditions": [{"type": t, "message": "c" * st.MAX_MESSAGE} for t in ("A", "B", "C")],
        "endpoint": "https://e.example/" + "p" * 2000,
    }
    assert st.size(status) > st.MAX_STATUS_BYTES
    small = st.bounded(status)
    assert st.size(small) <= st.MAX_STATUS_BYTES
    assert small["endpoint"] == status["endpoint"]  # only details and messages give way
    assert list(small.get("details", {})) == list(status["details"])[: len(small["details"])]


@pytest.mark.parametrize("location", ["http://127.0.0.1:99999/v1/models", "http://[::1/x"])
async def test_a_redirect_to_an_unparsable_url_is_a_named_verdict(location: str) -> None:
    from servers.misbehaving import redirect

    async with RawServer(redirect(location)) as server:
        spec = parse_spec(
            {"provider": "openai", "endpoint": server.url + "/v1", "apiKeySecretRef": {"name": "k"}}
        )
        pool = ClientPool(EgressPolicy(), resolver=loopback_only, proxies={})
        try:
            verdict = await validate(spec, OneSecret(), pool, Defaults())
        finally:
            await pool.aclose()
    assert verdict.reason.value == "UnexpectedResponse"
    assert "cannot be parsed" in verdict.message


def test_an_invalid_spec_past_an_older_crd_still_yields_a_small_status() -> None:
    from llmconn.controller.memory import Conn, invalid_verdict
    from llmconn.model.spec import ValidationType
    from llmconn.model.verdict import Effective

    conn = Conn(namespace="t", name="c", uid="u")
    conn.spec_error = "spec.endpoint: String should have at most 2048 characters"
    conn.spec_invalid = {"provider": "p" * 10_000, "endpoint": "https://" + "e" * 1_000_000}
    conn.spec_invalid["model"] = {"not": "a string"}
    eff = Effective(ValidationType.CONNECTIVITY, 300.0, 10.0, 3)
    verdict = invalid_verdict(conn, eff, lambda: dt.datetime(2026, 11, 30, tzinfo=dt.UTC))
    status = st.next_status({}, verdict, generation=1, requested_at=None, secret_grace_over=True)
    assert st.size(status) <= st.MAX_STATUS_BYTES
    check_against(status_schema(), status)
    assert isinstance(status["model"], str)
