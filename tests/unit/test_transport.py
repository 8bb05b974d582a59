"""transport.py: httpx2 requests over aiohttp, against raw loopback servers that answer
exactly what each test needs (good answers, slow streams, silence, hang-ups)."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx2
import kopf
import pytest

from llmconn.kube import API_CONNECTIONS, PLANNED_WRITES, Conflict, Kube, NotFound
from llmconn.transport import AiohttpTransport, client_timeout

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A loopback TCP server; counts connections and the most open at once."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open = 0
        self.peak = 0
        self.requests: list[bytes] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length) if length else b""
        self.requests.append(head + body)
        return head, body


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[tuple[Server, str]]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> tuple[Server, str]:
        server = Server(handler)
        srv = await asyncio.start_server(server._serve, "127.0.0.1", 0)
        servers.append(srv)
        return server, f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"

    yield start
    for srv in servers:
        srv.close()


def answer(status: int, body: bytes, *headers: str, reason: str = "OK") -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def client(url: str, limit: int | None = 4, **options: Any) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(base_url=url, transport=AiohttpTransport(None, limit), **options)


Get = Callable[[str, httpx2.Timeout], Awaitable[Any]]


async def _through_client(url: str, timeout: httpx2.Timeout) -> Any:
    async with client(url, timeout=timeout) as http:
        return await http.get("/")


async def _through_call(url: str, timeout: httpx2.Timeout) -> Any:
    wire = AiohttpTransport(None, 4)
    try:
        return await wire.call(
            "GET", url + "/", headers={}, body=b"", timeout=client_timeout(timeout.as_dict())
        )
    finally:
        await wire.aclose()


# Both ways onto the wire raise the same httpx2 errors.
both_paths = pytest.mark.parametrize(
    "get", [_through_client, _through_call], ids=["httpx2-client", "call"]
)


async def test_a_request_and_its_answer_cross_unchanged(serve) -> None:  # type: ignore[no-untyped-def]
    server: Server

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            _, body = await server.read_request(reader)
            doc = json.dumps({"got": json.loads(body)}).encode()
            writer.write(answer(409, doc, "Content-Type: application/json", reason="Conflict"))
            await writer.drain()

    server, url = await serve(echo)
    async with client(url, headers={"Authorization": "Bearer t"}) as http:
        for n in range(3):
            response = await http.patch(
                "/apis/x/status?dryRun=All",
                json={"status": {"n": n}},
                headers={"Content-Type": "application/merge-patch+json"},
            )
            assert response.status_code == 409 and response.reason_phrase == "Conflict"
            assert response.json() == {"got": {"status": {"n": n}}}
    assert server.connections == 1  # kept alive between requests
    head = server.requests[0].split(b"\r\n\r\n")[0].decode().lower()
    assert head.startswith("patch /apis/x/status?dryrun=all http/1.1")
    assert "authorization: bearer t" in head
    assert "content-type: application/merge-patch+json" in head
    assert head.count("content-length:") == 1 and head.count("host:") == 1


async def test_an_answer_is_decoded_as_httpx2_asked(serve) -> None:  # type: ignore[no-untyped-def]
    server: Server

    async def zipped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, _ = await server.read_request(reader)
        assert b"gzip" in head.lower()  # httpx2's Accept-Encoding went out
        writer.write(answer(200, gzip.compress(b'{"a": 1}'), "Content-Encoding: gzip"))
        await writer.drain()

    server, url = await serve(zipped)
    async with client(url) as http:
        assert (await http.get("/")).json() == {"a": 1}


async def test_a_stream_is_read_as_it_arrives(serve) -> None:  # type: ignore[no-untyped-def]
    server: Server
    more = asyncio.Event()

    async def watch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b'6\r\n{"a":1\r\n2\r\n}\n\r\n')
        await writer.drain()
        await more.wait()
        writer.write(b'8\r\n{"b":2}\n\r\n0\r\n\r\n')
        await writer.drain()

    server, url = await serve(watch)
    async with client(url, limit=None) as http, http.stream("GET", "/watch") as response:
        lines = response.aiter_lines()
        assert json.loads(await anext(lines)) == {"a": 1}  # before the server goes on
        more.set()
        assert json.loads(await anext(lines)) == {"b": 2}


async def test_a_stream_given_up_closes_its_connection(serve) -> None:  # type: ignore[no-untyped-def]
    server: Server

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await server.read_request(reader)
            if b"/watch" not in head:
                writer.write(answer(200, b"{}"))
                await writer.drain()
                continue
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{}\n\r\n")
            await writer.drain()
            await asyncio.sleep(30)

    server, url = await serve(endless)
    async with client(url, limit=1) as http:
        async with http.stream("GET", "/watch") as response:
            await anext(response.aiter_lines())
        # The half-read stream is not handed to the next request (it would read the stream's
        # rest as its answer): a new connection serves it.
        assert (await http.get("/after")).json() == {}
    assert server.connections == 2


async def test_the_bound_on_connections_holds(serve) -> None:  # type: ignore[no-untyped-def]
    server: Server

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_request(reader)
            await asyncio.sleep(0.05)
            writer.write(answer(200, b"{}"))
            await writer.drain()

    server, url = await serve(slow)
    async with client(url, limit=2) as http:
        await asyncio.gather(*(http.get(f"/{n}") for n in range(8)))
    assert server.peak == 2 and len(server.requests) == 8


@both_paths
async def test_refused_is_a_connect_error(get: Get) -> None:
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    with pytest.raises(httpx2.ConnectError):
        await get(f"http://127.0.0.1:{port}", httpx2.Timeout(5.0))


@pytest.mark.parametrize(
    "sent",
    [
        b"",  # a hang-up before any answer
        b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial"',  # a cut answer
        b"SSH-2.0-OpenSSH\r\n\r\n",  # an answer that is not HTTP
    ],
    ids=["hang-up", "cut", "not-http"],
)
@both_paths
async def test_a_broken_answer_is_a_protocol_error(serve, sent: bytes, get: Get) -> None:  # type: ignore[no-untyped-def]
    server: Server

    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(sent)
        await writer.drain()

    server, url = await serve(broken)
    with pytest.raises(httpx2.RemoteProtocolError):
        await get(url, httpx2.Timeout(5.0))


@both_paths
async def test_silence_is_a_read_timeout(serve, get: Get) -> None:  # type: ignore[no-untyped-def]
    server: Server

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        await asyncio.sleep(30)

    server, url = await serve(silent)
    with pytest.raises(httpx2.ReadTimeout):
        await get(url, httpx2.Timeout(5.0, read=0.2))


# --- the status PATCH: Kube's request straight on the wire ----------------------------------


class Login:
    """Kube with a token read again on a 401, as a rotated service-account token is."""

    def __init__(self, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tokens = iter(["old-token", "new-token"])
        self.url = url
        monkeypatch.setattr("llmconn.kube.login", self.login)

    def login(self) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=self.url, token=next(self.tokens))


def _status(answered: dict[int, bytes], server: Server) -> Handler:
    async def api(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, body = await server.read_request(reader)
            code = 401 if b"old-token" in head else int(json.loads(body)["status"]["code"])
            doc = answered.get(code, b'{"kind": "Status"}')
            writer.write(answer(code, doc, "Content-Type: application/json", reason="X"))
            await writer.drain()

    return api


async def test_the_status_patch_goes_out_as_httpx2_sent_it(serve, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    server: Server
    written = {"metadata": {"resourceVersion": "8"}, "status": {"code": 200, "msg": "é"}}
    server, url = await serve(
        lambda r, w: _status({200: json.dumps(written).encode()}, server)(r, w)
    )
    Login(url + "/prefix/", monkeypatch)  # a server URL with a path, as behind some proxies
    kube = Kube()  # logs in (the monkeypatched login): the token it read goes out
    try:
        got = await kube.patch_status("ns", "c1", {"code": 200, "msg": "é"}, "7")
    finally:
        await kube.aclose()
    assert got == written
    # The old token was refused once; the operator logged in again and sent the PATCH again.
    assert len(server.requests) == 2
    head, _, body = server.requests[1].partition(b"\r\n\r\n")
    lines = head.decode().lower().split("\r\n")
    assert lines[0] == (
        "patch /prefix/apis/llmconn.dev/v1alpha1/namespaces/ns/llmconnections/c1/status http/1.1"
    )
    assert "authorization: bearer new-token" in lines
    assert "content-type: application/merge-patch+json" in lines
    assert "user-agent: llmconn-operator" in lines
    assert sum(line.startswith(("host:", "content-length:")) for line in lines) == 2
    assert json.loads(body) == {
        "status": {"code": 200, "msg": "é"},
        "metadata": {"resourceVersion": "7"},
    }


@pytest.mark.parametrize(
    ("code", "raised"),
    [
        (404, NotFound),
        (409, Conflict),
        (422, httpx2.HTTPStatusError),
        (500, httpx2.HTTPStatusError),
    ],
)
async def test_a_refused_status_patch_raises_what_callers_catch(serve, code, raised) -> None:  # type: ignore[no-untyped-def]
    server: Server
    server, url = await serve(lambda r, w: _status({}, server)(r, w))
    kube = Kube(kopf.ConnectionInfo(server=url, token="t"))
    try:
        with pytest.raises(raised) as caught:
            await kube.patch_status("ns", "c1", {"code": code})
    finally:
        await kube.aclose()
    if raised is httpx2.HTTPStatusError:
        assert caught.value.response.status_code == code  # type: ignore[attr-defined]
    else:
        assert str(caught.value) == "ns/c1"


async def test_periodic_status_writes_are_bounded_and_urgent_ones_are_not(serve) -> None:  # type: ignore[no-untyped-def]
    server: Server
    release = asyncio.Event()

    async def api(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await server.read_request(reader)
            if b"/planned-" in head:
                await release.wait()  # an API server that has slowed down
            writer.write(answer(200, b'{"metadata": {}}', "Content-Type: application/json"))
            await writer.drain()

    server, url = await serve(api)
    kube = Kube(kopf.ConnectionInfo(server=url, token="t"))
    try:
        planned = [
            asyncio.create_task(kube.patch_status("ns", f"planned-{n}", {}))
            for n in range(API_CONNECTIONS * 2)
        ]
        while server.open < PLANNED_WRITES:
            await asyncio.sleep(0.01)
        # Every periodic write that may is stuck at the server; a user's change still goes out.
        await asyncio.wait_for(kube.patch_status("ns", "urgent", {}, urgent=True), 5)
        assert server.open == PLANNED_WRITES + 1
        release.set()
        await asyncio.gather(*planned)
    finally:
        release.set()
        await kube.aclose()
    assert len(server.requests) == API_CONNECTIONS * 2 + 1
