"""Compressed answers for the loopback servers: honest ones, and decompression bombs.

`Compressed(app, coding)` is ASGI middleware that compresses every answer of a real test
server (the OpenAI dialect, the MCP SDK server) the way production web servers do, flushing
after each body chunk so that event streams still arrive event by event. `bomb_app(coding,
kind)` answers with a small body that inflates to BOMB_BYTES: a JSON answer, or an event
stream that names its message endpoint and then sends one endless `data:` line (the legacy
MCP HTTP+SSE transport). `endless_events_app()` sends an event stream of small keep-alive
events without end. Codings: gzip, deflate (zlib-wrapped), deflate-raw (sent as `deflate`,
as some servers do), br and zstd (when `brotli` / `backports.zstd` are importable), and
chains such as "gzip, gzip".
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import zlib
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any, Literal

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Kind = Literal["json", "sse"]

BOMB_BYTES = 300 * 1024 * 1024  # as in the report: 300 MiB from about 300 KB of gzip
_PIECE = 1024 * 1024
_SEND = 64 * 1024  # bytes per ASGI body message


def available(coding: str) -> bool:
    """Whether this machine can make (and so the operator may decode) `coding`."""
    module = {"br": "brotli", "zstd": "backports.zstd"}.get(coding)
    if module is None:
        return True
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


class _Encoder:
    """One coding, streamed: `chunk()` returns what can be sent now, `end()` the rest."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        match coding:
            case "gzip":
                self._zlib = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            case "deflate":
                self._zlib = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS)
            case "deflate-raw":
                self._zlib = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
            case "br":
                self._brotli = importlib.import_module("brotli").Compressor(quality=5)
            case "zstd":
                self._zstd = importlib.import_module("backports.zstd").ZstdCompressor(level=3)
            case _:
                raise ValueError(f"unknown coding {coding!r}")

    @property
    def header(self) -> str:
        return "deflate" if self.coding == "deflate-raw" else self.coding

    def chunk(self, data: bytes, *, flush: bool = False) -> bytes:
        if self.coding == "br":
            out = self._brotli.process(data)
            return out + self._brotli.flush() if flush else out
        if self.coding == "zstd":
            out = self._zstd.compress(data)
            if flush:
                out += self._zstd.flush(self._zstd.FLUSH_BLOCK)
            return out
        out = self._zlib.compress(data)
        return out + self._zlib.flush(zlib.Z_SYNC_FLUSH) if flush else out

    def end(self) -> bytes:
        if self.coding == "br":
            return bytes(self._brotli.finish())
        if self.coding == "zstd":
            return bytes(self._zstd.flush())
        return self._zlib.flush()


def _codings(chain: str) -> list[str]:
    return [part.strip() for part in chain.split(",")]


def header_of(chain: str) -> str:
    """The Content-Encoding header for a chain ("deflate-raw" is sent as "deflate")."""
    return ", ".join(_Encoder(coding).header for coding in _codings(chain))


def compress(chain: str, pieces: Iterator[bytes]) -> bytes:
    """`pieces` encoded with every coding of `chain`, in order, without holding them whole."""
    for coding in _codings(chain):
        pieces = _encoded(coding, pieces)
    return b"".join(pieces)


def _encoded(coding: str, pieces: Iterator[bytes]) -> Iterator[bytes]:
    encoder = _Encoder(coding)
    for piece in pieces:
        if out := encoder.chunk(piece):
            yield out
    yield encoder.end()


def _filled(head: bytes, size: int) -> Iterator[bytes]:
    yield head
    filler = b"x" * _PIECE
    for _ in range(size // _PIECE):
        yield filler


ENDPOINT_EVENT = b"event: endpoint\ndata: /messages/?session_id=bomb\n\n"
SSE_HEAD = ENDPOINT_EVENT + b"event: message\ndata: "


@functools.cache
def bomb(chain: str, kind: Kind) -> bytes:
    """A body that inflates to BOMB_BYTES: JSON, or an event stream (see the module doc)."""
    head = SSE_HEAD if kind == "sse" else b'{"jsonrpc": "2.0", "id": 0, "result": {"pad": "'
    return compress(chain, _filled(head, BOMB_BYTES))


def bomb_app(chain: str, kind: Kind) -> ASGIApp:
    """Every request gets the bomb, except the SSE transport's message POSTs (202)."""
    body = bomb(chain, kind)
    content_type = "text/event-stream" if kind == "sse" else "application/json"

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "POST" and scope["path"].startswith("/messages"):
            await _drain(receive)
            await send({"type": "http.response.start", "status": 202, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-encoding", header_of(chain).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for start in range(0, len(body), _SEND):
            more = start + _SEND < len(body)
            chunk = body[start : start + _SEND]
            await send({"type": "http.response.body", "body": chunk, "more_body": more})

    return app


def endless_events_app() -> ASGIApp:
    """An event stream that names its message endpoint, then sends keep-alives forever."""
    events = b"event: message\ndata: \n\n" * 100  # empty data: the SDK skips these

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "POST":
            await _drain(receive)
            await send({"type": "http.response.start", "status": 202, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        gone = asyncio.Event()

        async def listen() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        listener = asyncio.create_task(listen())
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": ENDPOINT_EVENT, "more_body": True})
        while not gone.is_set():  # uvicorn's send returns quietly once the client is gone
            await send({"type": "http.response.body", "body": events, "more_body": True})
            await asyncio.sleep(0)
        await listener

    return app


class Compressed:
    """ASGI middleware: every answer with a body is sent with Content-Encoding `chain`."""

    def __init__(self, app: ASGIApp, chain: str) -> None:
        self.app = app
        self.chain = chain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        encoders = [_Encoder(coding) for coding in _codings(self.chain)]
        bodiless = False

        async def compressing(message: Message) -> None:
            nonlocal bodiless
            if message["type"] == "http.response.start":
                bodiless = message["status"] in (204, 304)
                if not bodiless:
                    kept = [
                        (name, value)
                        for name, value in message.get("headers", [])
                        if name.lower() not in (b"content-length", b"content-encoding")
                    ]
                    encoding = header_of(self.chain).encode()
                    message = {**message, "headers": [*kept, (b"content-encoding", encoding)]}
            elif message["type"] == "http.response.body" and not bodiless:
                data = bytes(message.get("body", b""))
                more = bool(message.get("more_body", False))
                for encoder in encoders:
                    data = encoder.chunk(data, flush=more) + (b"" if more else encoder.end())
                message = {**message, "body": data}
            await send(message)

        await self.app(scope, receive, compressing)


async def _drain(receive: Receive) -> None:
    while (await receive()).get("more_body"):
        pass
