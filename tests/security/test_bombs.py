"""Decompression bombs: no answer may take the operator's memory, whatever its encoding.

An answer of a few hundred KB that inflates to 300 MiB once took the operator from 41 to
672 MiB through the MCP SDK. The cap lives in the HTTP layer that every probe's transport goes
through (`llmconn.net.bodies.CappedTransport`). Here every encoding is thrown at a plain probe (the
openai provider), at MCP over streamable HTTP and at MCP over legacy SSE, with the one-shot
`llmconn validate` in a subprocess whose peak RSS (`ru_maxrss` from `os.wait4`) is compared
with the same run against a small honest answer (without the cap: 674 MiB for the plain
probe, 975 MiB for streamable HTTP, against about 72). Over legacy SSE the SDK's own 1 MiB
event limit already bounds memory; there the cap turns its ProtocolError into the named
UnexpectedResponse. Honest compressed answers must still decode.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmconn.model.reasons import Reason
from llmconn.model.verdict import Defaults, SecretData
from llmconn.net import bodies as llmconn_bodies
from llmconn.net.egress import EgressPolicy
from llmconn.net.pool import ClientPool
from llmconn.probes import parse_spec
from llmconn.validation.validate import validate
from netkit import loopback_only
from servers import mcp_server, openai_dialect
from servers.bombs import (
    BOMB_BYTES,
    Compressed,
    available,
    bomb,
    bomb_app,
    compress,
    endless_events_app,
    header_of,
)
from servers.misbehaving import RawServer, answer
from servers.serve import serve

KEY = "sk-bomb-test-0123456789"
LLMCONN = Path(sys.executable).with_name("llmconn")
MARGIN_KIB = 30 * 1024  # a bomb run's peak RSS may exceed the honest run's by this much
TARGETS = ("openai", "mcp-streamable", "mcp-sse")
CODINGS = ("gzip", "deflate", "deflate-raw", "br", "zstd", "gzip, gzip")


def needs(chain: str) -> Any:
    missing = [c for c in chain.split(", ") if not available(c)]
    return pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)}: library missing")


def coding_params(codings: tuple[str, ...] = CODINGS) -> list[Any]:
    return [pytest.param(c, marks=needs(c), id=c.replace(", ", "+")) for c in codings]


# --- what is served and what is validated ----------------------------------------------------


def honest_app(target: str, chain: str | None) -> Any:
    """The real server for `target`, its answers compressed with `chain` when given."""
    if target == "openai":
        app: Any = openai_dialect.make_app(openai_dialect.Dialect(keys=frozenset({KEY})))
    else:
        app = mcp_server.make_app()
    return app if chain is None else Compressed(app, chain)


def endpoint(base: str, target: str) -> str:
    return {"openai": base + "/v1", "mcp-streamable": base + "/mcp", "mcp-sse": base + "/sse"}[
        target
    ]


def raw_spec(target: str, base: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "endpoint": endpoint(base, target),
        "validation": {"type": "Connectivity", "timeout": "30s"},
    }
    if target == "openai":
        spec |= {"provider": "openai", "apiKeySecretRef": {"name": "creds"}}
    else:
        transport = "sse" if target == "mcp-sse" else "streamable-http"
        spec |= {"provider": "mcp", "mcp": {"transport": transport}}
    return spec


class Secrets:
    """The one Secret the openai connections name."""

    async def get(self, name: str) -> SecretData | None:
        return SecretData({"apiKey": KEY.encode()}, "1") if name == "creds" else None


async def check(target: str, base: str, pool: ClientPool | None = None, **extra: Any) -> Any:
    clients = (
        pool if pool is not None else ClientPool(EgressPolicy(), resolver=loopback_only, proxies={})
    )
    try:
        spec = parse_spec(raw_spec(target, base) | extra)
        return await validate(spec, Secrets(), clients, Defaults())
    finally:
        await clients.aclose()


# --- the operator's memory, measured on the one-shot CLI -------------------------------------


def manifest(tmp_path: Path, target: str, base: str) -> Path:
    connection = {
        "apiVersion": "llmconn.dev/v1alpha1",
        "kind": "LLMConnection",
        "metadata": {"name": "target"},
        "spec": raw_spec(target, base),
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "creds"},
        "stringData": {"apiKey": KEY},
    }
    path = tmp_path / f"{target}.yaml"
    path.write_text(json.dumps(connection) + "\n---\n" + json.dumps(secret) + "\n")
    return path


# On Linux a child's ru_maxrss starts at its parent's high-water mark (the spawned child shares
# the parent's memory until it execs), and pytest's is larger than the CLI's own peak. So a
# small launcher, a fresh interpreter, spawns the CLI and reads its peak with os.wait4.
LAUNCHER = """
import os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_cli(path: Path) -> tuple[dict[str, Any], int]:
    """`llmconn validate -f path -o json` in a subprocess: its status, and its peak RSS in KiB."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    out, err, peak = (path.with_suffix(suffix) for suffix in (".out", ".err", ".rss"))
    command = [str(LLMCONN), "validate", "-f", str(path), "-o", "json"]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        # The timeout guards the suite against a hung run; it is not an assertion on speed.
        launched = subprocess.run(
            [sys.executable, "-I", "-S", "-c", LAUNCHER, str(peak), *command],
            stdout=stdout,
            stderr=stderr,
            env=env,
            timeout=120,
            check=False,
        )
    assert launched.returncode in (0, 1), err.read_text()
    [item] = json.loads(out.read_text())
    return item["status"], int(peak.read_text())


@pytest.fixture(scope="module")
def honest_peak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """Peak RSS (KiB) of the CLI validating each target against its honest gzip server."""
    peaks: dict[str, int] = {}
    tmp = tmp_path_factory.mktemp("honest")
    for target in TARGETS:
        with serve(honest_app(target, "gzip")) as base:
            status, peak = run_cli(manifest(tmp, target, base))
        assert status["reason"] == "Validated", status["message"]
        peaks[target] = peak
    yield peaks


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("chain", coding_params(("gzip", "deflate", "br", "zstd")))
def test_a_bomb_ends_the_probe_and_the_operator_keeps_its_memory(
    tmp_path: Path, honest_peak: dict[str, int], target: str, chain: str
) -> None:
    kind = "sse" if target == "mcp-sse" else "json"
    with serve(bomb_app(chain, kind)) as base:
        status, peak = run_cli(manifest(tmp_path, target, base))

    grown = peak - honest_peak[target]
    assert grown < MARGIN_KIB, (
        f"peak RSS {peak // 1024} MiB against a {len(bomb(chain, kind)):,}-byte {chain} bomb, "
        f"{honest_peak[target] // 1024} MiB against an honest answer"
    )
    assert status["reason"] == "UnexpectedResponse", status["message"]
    assert f"larger than 1 MiB once decoded ({chain})" in status["message"]


@pytest.mark.parametrize("coding", coding_params(("br", "zstd")))
def test_httpx_would_decode_br_and_zstd_here(coding: str) -> None:
    # So the bombs above are the real threat: left to itself, httpx would inflate them whole.
    from httpx2._decoders import SUPPORTED_DECODERS

    assert coding in SUPPORTED_DECODERS
    assert coding in llmconn_bodies.ACCEPT_ENCODING


# --- the verdicts, in process ----------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("chain", coding_params())
async def test_every_encoding_of_a_bomb_is_unexpected_response(target: str, chain: str) -> None:
    kind = "sse" if target == "mcp-sse" else "json"
    with serve(bomb_app(chain, kind)) as base:
        verdict = await check(target, base)

    assert verdict.reason is Reason.UNEXPECTED_RESPONSE, verdict.message
    assert f"larger than 1 MiB once decoded ({header_of(chain)})" in verdict.message


def test_the_bombs_are_bombs() -> None:
    for chain in ("gzip", "deflate"):
        assert len(bomb(chain, "json")) < 400 * 1024 < BOMB_BYTES


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("chain", coding_params())
async def test_honest_compressed_answers_are_decoded(target: str, chain: str) -> None:
    model = {"model": "gpt-4o"} if target == "openai" else {}
    with serve(honest_app(target, chain)) as base:
        verdict = await check(target, base, validation={"type": "Model", "timeout": "30s"}, **model)

    assert verdict.reason is Reason.VALIDATED, verdict.message


async def test_accept_encoding_names_only_what_the_operator_decodes() -> None:
    app = mcp_server.make_app()
    with serve(Compressed(app, "gzip")) as base:
        verdict = await check("mcp-streamable", base)

    assert verdict.reason is Reason.VALIDATED, verdict.message
    offered = {seen.headers.get("accept-encoding") for seen in app.seen}
    expected = ", ".join(["gzip", "deflate"] + [c for c in ("br", "zstd") if available(c)])
    assert offered == {expected}


@pytest.mark.parametrize("coding", coding_params(("br", "zstd")))
async def test_an_encoding_the_operator_cannot_decode_is_never_inflated(
    monkeypatch: pytest.MonkeyPatch, coding: str
) -> None:
    # As on a machine without the library: not asked for, and if sent anyway, left encoded.
    # httpx here could decode it, so only removing the header keeps it from inflating it.
    monkeypatch.setattr(llmconn_bodies, "_DECODERS", {"gzip": llmconn_bodies._gzip})
    monkeypatch.setattr(llmconn_bodies, "ACCEPT_ENCODING", "gzip")
    with serve(bomb_app(coding, "json")) as base:
        pool = ClientPool(EgressPolicy(), resolver=loopback_only, proxies={})
        try:
            response = await pool.client().get(base + "/v1/models")
        finally:
            await pool.aclose()
        verdict = await check("openai", base)

    assert response.request.headers["accept-encoding"] == "gzip"
    assert "content-encoding" not in response.headers
    assert response.content == bomb(coding, "json")  # as sent: a few KB, not 300 MiB
    assert verdict.reason is Reason.UNEXPECTED_RESPONSE, verdict.message


async def test_an_answer_too_large_before_decoding_is_refused_on_the_wire() -> None:
    noise = os.urandom(2 * 1024 * 1024)  # does not compress: over the cap as sent
    body = compress("gzip", iter((noise,)))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    with serve(app) as base:
        verdict = await check("openai", base)

    assert verdict.reason is Reason.UNEXPECTED_RESPONSE, verdict.message
    assert "larger than 1 MiB on the wire, before decoding (gzip)" in verdict.message


async def test_a_corrupt_encoding_is_unexpected_response() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"\x1f\x8b not gzip at all"})

    with serve(app) as base:
        verdict = await check("openai", base)

    assert verdict.reason is Reason.UNEXPECTED_RESPONSE, verdict.message
    assert "not valid gzip" in verdict.message


async def test_too_many_codings_are_refused_before_decoding() -> None:
    chain = ", ".join(["gzip"] * 6)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-type", b"application/json"), (b"content-encoding", chain.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": compress(chain, iter((b"{}",)))})

    with serve(app) as base:
        verdict = await check("openai", base)

    assert verdict.reason is Reason.UNEXPECTED_RESPONSE, verdict.message
    assert "more than 5 content codings" in verdict.message


async def test_endless_small_sse_events_end_at_the_cap() -> None:
    # The cap counts the whole event stream (one HTTP answer), not one event: a server that
    # never stops sending keep-alives is stopped after 1 MiB, not only by the timeout.
    with serve(endless_events_app()) as base:
        verdict = await check("mcp-sse", base)

    assert verdict.reason is Reason.UNEXPECTED_RESPONSE, verdict.message
    assert "larger than 1 MiB" in verdict.message
    assert "initialize" in verdict.message


async def test_a_stream_read_in_pieces_is_decoded_whole() -> None:
    # Honest gzip arriving a few bytes at a time: the decoder keeps state across reads.
    text = json.dumps({"object": "list", "data": [{"id": f"m{i}"} for i in range(2000)]})
    body = compress("gzip", iter((text.encode(),)))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for start in range(0, len(body), 7):
            chunk = body[start : start + 7]
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    with serve(app) as base:
        pool = ClientPool(EgressPolicy(), resolver=loopback_only, proxies={})
        try:
            async with pool.client().stream("GET", base + "/") as response:
                pieces = [piece async for piece in response.aiter_raw()]
        finally:
            await pool.aclose()

    assert b"".join(pieces) == text.encode()


@needs("zstd")
async def test_a_zstd_frame_asking_for_a_huge_window_is_refused() -> None:
    # RFC 9659: HTTP's zstd windows are at most 8 MiB; a larger one is memory the decoder
    # would have to set aside before producing a byte.
    from backports.zstd import CompressionParameter, ZstdCompressor

    compressor = ZstdCompressor(options={CompressionParameter.window_log: 27})
    body = compressor.compress(b"x" * (32 * 1024 * 1024)) + compressor.flush()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(b"content-type", b"application/json"), (b"content-encoding", b"zstd")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    with serve(app) as base:
        verdict = await check("openai", base)

    assert verdict.reason is Reason.UNEXPECTED_RESPONSE, verdict.message
    assert "not valid zstd" in verdict.message


async def test_the_cap_holds_behind_a_proxy() -> None:
    # Proxied clients get their own transport: the cap must wrap it too.
    async def resolve(host: str, port: int) -> list[str]:
        return ["192.0.2.10"]  # a documentation address: only the proxy is dialled

    gzip_bomb = answer(200, bomb("gzip", "json"), headers={"Content-Encoding": "gzip"})
    async with RawServer(gzip_bomb) as proxy:
        pool = ClientPool(EgressPolicy(), resolver=resolve, proxies={"all://": proxy.url})
        verdict = await check("openai", "http://api.test", pool)

    assert verdict.reason is Reason.UNEXPECTED_RESPONSE, verdict.message
    assert "larger than 1 MiB once decoded (gzip)" in verdict.message
    assert [request.target for request in proxy.requests] == ["http://api.test/v1/models"]
