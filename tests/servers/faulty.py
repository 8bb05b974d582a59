"""A loopback OpenAI-style provider whose fault is switched while it serves: `make soak` and
its e2e test turn it slow, resetting, stalling or flipping under load.

It is a `RawServer` (misbehaving.py) so that it can do what an HTTP framework does not let an
app do: reset a connection with no answer, or hold a request. Every answer it does give is the
OpenAI dialect app's (openai_dialect.py, whose docstring cites its sources), called in
process: good answers from a `Dialect` that accepts the key, bad ones from one that accepts
no key (401 `invalid_api_key`, OpenAI's answer to a wrong key).

Modes:

- ok: every request answered well;
- slow: every answer after `delay` seconds;
- reset: the request is read, then the connection is reset (RST, no answer);
- stall: the request is held until the mode changes (longer than any validation timeout);
- flip: answers alternate between good and bad, request by request.

As a process (`python tests/servers/faulty.py --port P --key K --model M`), GET
/_fault/MODE?delay=S switches it and GET /_fault/stats returns its counts, as JSON; those paths
answer in every mode.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import struct
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2

if not __package__:  # run as a file (make soak): `servers` is not importable yet
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from servers.misbehaving import RawServer, RequestHead, _head
from servers.openai_dialect import Dialect, make_app

MODES = ("ok", "slow", "reset", "stall", "flip")
CONTROL = "/_fault/"
_FORWARDED = ("authorization", "accept", "user-agent")  # what the dialect app looks at
_HOP = frozenset({"content-length", "transfer-encoding", "connection"})


@dataclass
class FaultyProvider:
    """The behaviour a `RawServer` plays; change `mode` (and `delay`) at any time."""

    key: str
    model: str = "gpt-4o"
    mode: str = "ok"
    delay: float = 0.0  # seconds, in slow mode
    counts: Counter[str] = field(default_factory=Counter)  # answers by kind: good, bad, ...
    held: int = 0  # requests being delayed or stalled now
    held_max: int = 0
    _flip: int = 0
    _clients: dict[str, httpx2.AsyncClient] = field(default_factory=dict)

    def switch(self, mode: str, delay: float = 0.0) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
        self.mode, self.delay, self.held_max = mode, delay, self.held

    def stats(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "delay": self.delay,
            "held": self.held,
            "held_max": self.held_max,
            **self.counts,
        }

    async def __call__(self, head: RequestHead, writer: asyncio.StreamWriter) -> None:
        if head.target.startswith(CONTROL):
            await self._control(head, writer)
            return
        self.counts["requests"] += 1
        mode = self.mode
        if mode == "reset":
            self.counts["reset"] += 1
            _reset(writer)
            return
        if mode in ("slow", "stall"):
            self.counts[mode] += 1
            self.held += 1
            self.held_max = max(self.held_max, self.held)
            try:
                if mode == "slow":
                    await asyncio.sleep(self.delay)
                while self.mode == "stall":  # the client has long given up by the end
                    await asyncio.sleep(0.1)
            finally:
                self.held -= 1
        good = True
        if mode == "flip":
            self._flip += 1
            good = self._flip % 2 == 1
        self.counts["good" if good else "bad"] += 1
        await self._answer(head, writer, good)

    async def _answer(self, head: RequestHead, writer: asyncio.StreamWriter, good: bool) -> None:
        kind = "good" if good else "bad"
        client = self._clients.get(kind)
        if client is None:
            keys = frozenset({self.key}) if good else frozenset()
            app = make_app(Dialect(keys=keys, models=(self.model,)))
            client = httpx2.AsyncClient(
                transport=httpx2.ASGITransport(app=app), base_url="http://provider"
            )
            self._clients[kind] = client
        headers = {k: v for k, v in head.headers.items() if k in _FORWARDED}
        reply = await client.request(head.method, head.target, headers=headers)
        kept = {k: v for k, v in reply.headers.items() if k.lower() not in _HOP}
        writer.write(_head(reply.status_code, kept, len(reply.content)) + reply.content)
        await writer.drain()

    async def _control(self, head: RequestHead, writer: asyncio.StreamWriter) -> None:
        url = urlsplit(head.target)
        mode = url.path[len(CONTROL) :]
        status = 200
        if mode != "stats":
            delay = float(parse_qs(url.query).get("delay", ["0"])[0])
            try:
                self.switch(mode, delay)
            except ValueError:
                status = 404
        body = json.dumps(self.stats()).encode()
        writer.write(_head(status, {"Content-Type": "application/json"}, len(body)) + body)
        await writer.drain()

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST: SO_LINGER on with a zero timeout drops the connection at once."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextlib.contextmanager
def serving(provider: FaultyProvider) -> Iterator[str]:
    """Serve `provider` on 127.0.0.1 from a thread and event loop of its own (for a test that
    is not async); yields the base URL (no /v1)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    url: list[str] = []
    stop = asyncio.Event()

    async def run() -> None:
        async with RawServer(provider) as server:
            url.append(server.url)
            ready.set()
            await stop.wait()
        await provider.aclose()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError("the faulty provider did not start")
    try:
        yield url[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        loop.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True, help="the accepted key")
    parser.add_argument("--model", default="gpt-4o", help="the listed model")
    args = parser.parse_args(argv)
    provider = FaultyProvider(key=args.key, model=args.model)

    async def run() -> None:
        async with RawServer(provider, port=args.port):
            await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
