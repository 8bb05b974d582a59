"""Printable text only (issue 23, item 5): what a provider or a tenant writes cannot drive the
terminal of whoever reads the status, the Events, the logs or `kubectl llmconn explain`.

The escapes are the issue's: clear the screen, change the window title, write the clipboard
(OSC 52), hide text (SGR 8), the same through C1's CSI, and a bidi override that reorders
what is shown.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import httpx2
import kopf
import pydantic
import pytest

from llmconn.cli import kubectl_plugin as plugin
from llmconn.controller import kube as kube_mod
from llmconn.controller.wire import Answer
from llmconn.model import logs
from llmconn.model import status as st
from llmconn.model.reasons import Reason
from llmconn.model.verdict import Defaults, SecretData
from llmconn.net.egress import EgressPolicy
from llmconn.net.pool import ClientPool
from llmconn.probes import parse_spec
from llmconn.validation.validate import validate
from netkit import loopback_only
from servers.misbehaving import RawServer, answer

ESCAPES = (
    "\x1b[2J\x1b[H"  # clear the screen
    "\x1b]0;owned\x07"  # window title
    "\x1b]52;c;cm0gLXJmIH4K\x07"  # OSC 52: write the clipboard
    "\x1b[8mhidden\x1b[0m"  # concealed text
    "\x9b2J"  # C1 CSI
    "\u202egnp.exe"  # right-to-left override
    "\r\x00\x7f"
)
# What no output may hold: C0 (but the line break where lines are kept), DEL, C1, bidi.
UNPRINTABLE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u200b-\u200f]")


def clean(text: str) -> bool:
    return UNPRINTABLE.search(text) is None


class OneSecret:
    async def get(self, name: str) -> SecretData | None:
        return SecretData({"apiKey": b"sk-printable-0123456789abcdef"}, resource_version="7")


async def test_a_providers_escape_sequences_reach_no_status() -> None:
    body = json.dumps(
        {"error": {"message": f"bad key {ESCAPES}", "type": ESCAPES, "code": ESCAPES}}
    )
    headers = {"x-request-id": "req-1"}
    async with RawServer(answer(401, body, headers=headers)) as server:
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
    assert verdict.reason is Reason.INVALID_API_KEY
    for text in (verdict.message, verdict.code or "", *verdict.details, *verdict.details.values()):
        assert clean(text), repr(text)
    assert "bad key" in verdict.message  # the text stays, its controls go
    status = st.next_status({}, verdict, generation=1, requested_at=None, secret_grace_over=True)
    assert clean(json.dumps(status, ensure_ascii=False))


def test_a_status_built_from_any_verdict_is_printable() -> None:
    """status.py cuts every field it writes; the cut also makes it printable, so a verdict
    from any path (an invalid spec's, a probe's) cannot carry controls into the status."""
    from llmconn.model.spec import ValidationType
    from llmconn.model.verdict import Effective

    verdict = st.Verdict(
        reason=Reason.INVALID_CONFIGURATION,
        message=f"The spec cannot work: {ESCAPES}",
        provider="openai",
        endpoint="https://example.invalid/v1",
        model=f"gpt{ESCAPES}",
        validation=Effective(ValidationType.MODEL, 60.0, 10.0, 3),
        finished_at=st.dt.datetime(2026, 1, 1, tzinfo=st.dt.UTC),
        details={f"k{ESCAPES}": f"v{ESCAPES}"},
    )
    status = st.next_status({}, verdict, generation=1, requested_at=None, secret_grace_over=True)
    assert clean(json.dumps(status, ensure_ascii=False))


class MockWire:
    def __init__(self, sent: list[Any]) -> None:
        self.sent = sent

    async def call(self, method: str, url: str, *, headers: Any, body: Any, timeout: Any) -> Any:
        self.sent.append(json.loads(body))
        return Answer(201, httpx2.Headers(), b"{}")

    async def aclose(self) -> None:
        pass


async def test_an_event_message_is_printable() -> None:
    sent: list[Any] = []
    client = kube_mod.Kube(kopf.ConnectionInfo(server="https://127.0.0.1:1", token="t"))
    await client.aclose()
    client._wire = MockWire(sent)  # type: ignore[assignment]
    try:
        obj = {"metadata": {"namespace": "team-a", "name": "c", "uid": "u"}}
        await client.post_event(
            obj, type_="Warning", reason="InvalidAPIKey", message=f"refused: {ESCAPES}"
        )
    finally:
        await client.aclose()
    [event] = sent
    assert clean(event["message"]) and "refused:" in event["message"]


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    logs.guard()
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_a_log_record_is_printable_and_one_line(captured: io.StringIO) -> None:
    log = logging.getLogger("llmconn.test")
    log.warning("model %s refused\nFAKE: operator stopped", ESCAPES)
    try:
        raise ValueError(ESCAPES)
    except ValueError:
        log.exception("failed")
    lines = captured.getvalue().splitlines()
    assert clean(captured.getvalue())
    assert lines[0].startswith("model ") and "FAKE" in lines[0]  # no forged second line
    assert lines[1] == "failed" and lines[2].startswith("Traceback")  # tracebacks keep lines


def test_the_crd_and_the_spec_model_take_only_model_names() -> None:
    for bad in (f"gpt-4o{ESCAPES}", "gpt 4o", "gpt-4o\n", 'gpt"4o'):
        with pytest.raises(pydantic.ValidationError) as info:
            parse_spec({"provider": "openai", "model": bad, "apiKeySecretRef": {"name": "k"}})
        assert info.value.errors()[0]["loc"] == ("model",)
    for good in (
        "gpt-4o",
        "ft:gpt-4o-mini:org::abc123",
        "claude-sonnet-4-5@20250929",
        "anthropic.claude-3-5-haiku-20241022-v1:0",
        "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude",
    ):
        parse_spec({"provider": "openai", "model": good, "apiKeySecretRef": {"name": "k"}})


class FakeKubectl(plugin.Kubectl):
    """kubectl answering with a connection and Events that a tenant wrote: a tenant may
    create Events about its own connection, with any message."""

    def __init__(self) -> None:
        super().__init__("kubectl", [])

    def get(self, *args: str) -> dict[str, Any]:
        if args[0] == "events":
            return {
                "items": [
                    {
                        "lastTimestamp": "2026-01-01T00:00:00Z",
                        "type": "Warning",
                        "reason": f"Spoofed{ESCAPES}",
                        "message": ESCAPES,
                    }
                ]
            }
        if args[0] == "secrets":
            return {"items": []}
        return {
            "metadata": {"name": "c", "namespace": "team-a", "uid": "u", "generation": 1},
            "spec": {"provider": "openai", "model": f"gpt{ESCAPES}"},
            "status": {
                "result": "failed",
                "reason": "InvalidAPIKey",
                "message": ESCAPES,
                "observedGeneration": 1,
                "provider": "openai",
                "model": ESCAPES,
            },
        }

    def run(self, *args: str) -> str:
        return json.dumps(self.get(*args[1:]))


def test_kubectl_llmconn_escapes_what_it_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert plugin.explain(FakeKubectl(), "c") == plugin.OK
    out = capsys.readouterr().out
    assert clean(out), repr(out)
    assert "\\x1b[2J" in out  # shown, escaped: the reader sees what was there
    table = plugin.verdict_table("c", FakeKubectl().get("llmconnections", "c")["status"])
    assert clean(table) and "\\u202e" in table


def test_the_crds_model_pattern_is_the_spec_models() -> None:
    from pathlib import Path

    import yaml

    from llmconn.model.fields import MODEL_NAME_PATTERN

    root = Path(__file__).resolve().parents[2]
    for path in (root / "crds", root / "charts" / "llmconn" / "crds"):
        crd = yaml.safe_load((path / "llmconnections.yaml").read_text())
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert schema["properties"]["spec"]["properties"]["model"]["pattern"] == (
            MODEL_NAME_PATTERN
        )
