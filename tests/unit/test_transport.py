"""transport.py and the request path of kube.py: the API client's wire (`ApiWire.call` and
`ApiWire.stream`), its error mapping, Kube's one request path (re-login, `_check`), and the
bound on periodic status writes (writer.py), against raw loopback servers that answer exactly
what each test needs (good answers, slow streams, silence, hang-ups)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import httpx2
import kopf
import pytest

from llmconn.controller.kube import Conflict, Gone, Kube, NotFound
from llmconn.controller.memory import Conn
from llmconn.controller.metrics import Metrics
from llmconn.controller.wire import ApiWire, client_timeout
from llmconn.controller.writer import PLANNED_WRITES, StatusWriter

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

# How long a test waits for something that must happen before calling it a hang: only a
# broken test ever waits this long, and nothing asserts on durations.
GUARD = 10.0
TIMEOUT = client_timeout({"connect": 5.0, "read": 5.0})


class Server:
    """A loopback TCP server; counts connections, the most open at once, and the requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open = 0
        self.peak = 0
        self.requests: list[bytes] = []
        self.closed_by_client = 0  # connections the client hung up on
        self._changed = asyncio.Condition()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        await self.notify()
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()
            await self.notify()

    async def notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Until `condition` holds (checked at each connection, request and hang-up)."""
        async with asyncio.timeout(GUARD), self._changed:
            await self._changed.wait_for(condition)

    async def read_request(self, reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length) if length else b""
        self.requests.append(head + body)
        await self.notify()
        return head, body

    async def wait_hang_up(self, reader: asyncio.StreamReader) -> None:
        """Until the client closes this connection (what it sends meanwhile is ignored)."""
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        self.closed_by_client += 1
        await self.notify()


Serve = Callable[[Handler], Awaitable[tuple[Server, str]]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> tuple[Server, str]:
        server = Server(handler)
        srv = await asyncio.start_server(server._serve, "127.0.0.1", 0)
        servers.append(srv)
        return server, f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"

    yield start
    for srv in servers:
        srv.close()


@pytest.fixture
async def wires() -> AsyncIterator[Callable[[int | None], ApiWire]]:
    """ApiWires closed at the end of the test."""
    made: list[ApiWire] = []

    def make(limit: int | None) -> ApiWire:
        made.append(ApiWire(None, limit))
        return made[-1]

    yield make
    for wire in made:
        await wire.aclose()


def answer(status: int, body: bytes, *headers: str, reason: str = "OK") -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def head_lines(request: bytes) -> list[str]:
    return request.split(b"\r\n\r\n")[0].decode().lower().split("\r\n")


# --- requests read whole -------------------------------------------------------------------


async def test_a_request_and_its_answer_cross_unchanged(serve: Serve, wires: Any) -> None:
    server: Server

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            _, body = await server.read_request(reader)
            doc = json.dumps({"got": json.loads(body)}).encode()
            writer.write(
                answer(409, doc, "Content-Type: application/json", "X-Seen: yes", reason="Conflict")
            )
            await writer.drain()

    server, url = await serve(echo)
    wire = wires(4)
    headers = {"Authorization": "Bearer t", "Content-Type": "application/merge-patch+json"}
    for n in range(3):
        body = json.dumps({"status": {"n": n}}).encode()
        got = await wire.call(
            "PATCH", url + "/apis/x/status?dryRun=All", headers=headers, body=body, timeout=TIMEOUT
        )
        assert got.status == 409
        assert got.headers["content-type"] == "application/json"  # any case, as HTTP has it
        assert got.headers["X-Seen"] == "yes"
        assert json.loads(got.body) == {"got": {"status": {"n": n}}}
    assert server.connections == 1  # kept alive between requests
    lines = head_lines(server.requests[0])
    assert lines[0] == "patch /apis/x/status?dryrun=all http/1.1"
    assert "authorization: bearer t" in lines
    assert "content-type: application/merge-patch+json" in lines
    assert sum(line.startswith("content-length:") for line in lines) == 1
    assert sum(line.startswith("host:") for line in lines) == 1
    # Nothing the caller did not set, but for what HTTP/1.1 needs.
    assert not any(line.startswith(("user-agent:", "accept", "cookie:")) for line in lines)


async def test_a_bodiless_request_sends_no_body(serve: Serve, wires: Any) -> None:
    server: Server

    async def api(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(answer(200, b"{}"))
        await writer.drain()

    server, url = await serve(api)
    got = await wires(4).call("GET", url + "/x", headers={}, body=None, timeout=TIMEOUT)
    assert (got.status, got.body) == (200, b"{}")
    lines = head_lines(server.requests[0])
    assert lines[0] == "get /x http/1.1"
    assert server.requests[0].endswith(b"\r\n\r\n")  # the head, and nothing after it
    assert not any(line.startswith("transfer-encoding:") for line in lines)


async def test_a_compressed_answer_is_read_decoded(serve: Serve, wires: Any) -> None:
    """The API server compresses only when asked (and nothing asks), but a proxy may."""
    server: Server

    async def zipped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(answer(200, gzip.compress(b'{"a": 1}'), "Content-Encoding: gzip"))
        await writer.drain()

    server, url = await serve(zipped)
    got = await wires(4).call("GET", url + "/", headers={}, body=None, timeout=TIMEOUT)
    assert json.loads(got.body) == {"a": 1}


async def test_a_redirect_is_answered_not_followed(serve: Serve, wires: Any) -> None:
    """The bearer token goes to the API server only, never where an answer points."""
    server: Server

    async def moved(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_request(reader)
            writer.write(answer(302, b"", f"Location: {url}/elsewhere", reason="Found"))
            await writer.drain()

    server, url = await serve(moved)
    got = await wires(4).call(
        "GET", url + "/x", headers={"Authorization": "Bearer t"}, body=None, timeout=TIMEOUT
    )
    assert got.status == 302 and got.headers["location"].endswith("/elsewhere")
    assert len(server.requests) == 1


async def test_the_bound_on_connections_holds(serve: Serve, wires: Any) -> None:
    server: Server
    release = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_request(reader)
            await release.wait()  # a server that has slowed down
            writer.write(answer(200, b"{}"))
            await writer.drain()

    server, url = await serve(slow)
    wire = wires(2)
    calls = [
        asyncio.create_task(wire.call("GET", f"{url}/{n}", headers={}, body=None, timeout=TIMEOUT))
        for n in range(8)
    ]
    await server.until(lambda: len(server.requests) == 2)
    # A request that is answered goes through the event loop many times over; the other six
    # stay queued for a connection meanwhile.
    for _ in range(50):
        await asyncio.sleep(0)
    assert len(server.requests) == 2 and server.connections == 2
    release.set()
    await asyncio.gather(*calls)
    assert server.peak == 2 and len(server.requests) == 8


# --- streams -------------------------------------------------------------------------------


async def test_a_stream_is_read_as_it_arrives(serve: Serve, wires: Any) -> None:
    server: Server
    more = asyncio.Event()

    async def watch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(STREAM_HEAD + chunk(b'{"a":1') + chunk(b"}\n"))  # a line in two chunks
        await writer.drain()
        await more.wait()
        writer.write(chunk(b'{"b":2}\n') + b"0\r\n\r\n")
        await writer.drain()

    server, url = await serve(watch)
    headers = {"Accept": "application/json;as=x", "Authorization": "Bearer t"}
    async with wires(None).stream("GET", url + "/watch", headers=headers, timeout=TIMEOUT) as got:
        assert got.status == 200 and got.headers["content-type"] == "application/json"
        lines = got.lines()
        assert json.loads(await anext(lines)) == {"a": 1}  # before the server goes on
        more.set()
        assert json.loads(await anext(lines)) == {"b": 2}
        assert [line async for line in lines] == []
    sent = head_lines(server.requests[0])
    assert sent[0] == "get /watch http/1.1"
    assert "accept: application/json;as=x" in sent and "authorization: bearer t" in sent


async def test_a_line_over_64_kib_is_one_line(serve: Serve, wires: Any) -> None:
    """A Secret's metadata alone can be far over 64 KiB (annotations take 256 KiB, and
    managedFields come on top): such a line comes whole, however the server cuts it, even one
    longer than aiohttp's own readline takes (twice its read buffer); empty lines are
    skipped, and a last line without a newline still counts."""
    server: Server
    big = json.dumps({"type": "ADDED", "annotations": {"a": "x" * 1_200_000}}).encode()

    async def watch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        data = b'{"n":1}\n\n' + big + b"\n\r\n" + b'{"n":2}\n' + b'{"n":3}'
        writer.write(STREAM_HEAD)
        for start in range(0, len(data), 50_000):  # chunks cut across the lines
            writer.write(chunk(data[start : start + 50_000]))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    server, url = await serve(watch)
    async with wires(None).stream("GET", url + "/watch", headers={}, timeout=TIMEOUT) as got:
        lines = [line async for line in got.lines()]
    assert len(big) > 16 * 65536
    assert [json.loads(line) for line in lines] == [
        {"n": 1},
        json.loads(big),
        {"n": 2},
        {"n": 3},
    ]


async def test_a_streamed_answer_can_be_read_whole(serve: Serve, wires: Any) -> None:
    """As a refused watch is (its Status body)."""
    server: Server

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(answer(403, b'{"kind": "Status", "code": 403}', reason="Forbidden"))
        await writer.drain()

    server, url = await serve(refuse)
    async with wires(None).stream("GET", url + "/watch", headers={}, timeout=TIMEOUT) as got:
        assert got.status == 403
        assert json.loads(await got.read()) == {"kind": "Status", "code": 403}


async def test_a_stream_given_up_closes_its_connection(serve: Serve, wires: Any) -> None:
    server: Server

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await server.read_request(reader)
            if b"/watch" not in head:
                writer.write(answer(200, b"{}"))
                await writer.drain()
                continue
            writer.write(STREAM_HEAD + chunk(b"{}\n"))
            await writer.drain()
            await server.wait_hang_up(reader)  # the stream never ends on its own
            return

    server, url = await serve(endless)
    wire = wires(1)
    async with wire.stream("GET", url + "/watch", headers={}, timeout=TIMEOUT) as got:
        await anext(got.lines())
    await server.until(lambda: server.closed_by_client == 1)  # given up: closed at once
    # The half-read stream is not handed to the next request (it would read the stream's
    # rest as its answer): a new connection serves it, though the bound is one.
    after = await wire.call("GET", url + "/after", headers={}, body=None, timeout=TIMEOUT)
    assert after.body == b"{}"
    assert server.connections == 2


async def test_a_stream_read_to_its_end_keeps_its_connection(serve: Serve, wires: Any) -> None:
    server: Server

    async def api(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, _ = await server.read_request(reader)
            if b"/watch" in head:
                writer.write(STREAM_HEAD + chunk(b"{}\n") + b"0\r\n\r\n")
            else:
                writer.write(answer(200, b"{}"))
            await writer.drain()

    server, url = await serve(api)
    wire = wires(1)
    async with wire.stream("GET", url + "/watch", headers={}, timeout=TIMEOUT) as got:
        assert [line async for line in got.lines()] == [b"{}"]
    await wire.call("GET", url + "/after", headers={}, body=None, timeout=TIMEOUT)
    assert server.connections == 1 and server.closed_by_client == 0


async def test_without_a_bound_every_stream_has_a_connection(serve: Serve, wires: Any) -> None:
    """Watches each hold a connection for good: more of them than aiohttp's default pool
    (100) must all be open at once."""
    server: Server
    streams = 110

    async def watch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(STREAM_HEAD + chunk(b"{}\n"))
        await writer.drain()
        await server.wait_hang_up(reader)

    server, url = await serve(watch)
    wire = wires(None)
    first_lines = asyncio.Queue[bytes]()
    leave = asyncio.Event()

    async def hold(n: int) -> None:
        async with wire.stream("GET", f"{url}/watch/{n}", headers={}, timeout=TIMEOUT) as got:
            await first_lines.put(await anext(got.lines()))
            await leave.wait()

    holders = [asyncio.create_task(hold(n)) for n in range(streams)]
    try:
        async with asyncio.timeout(GUARD):
            for _ in range(streams):
                assert await first_lines.get() == b"{}"
        assert server.open == streams
    finally:
        leave.set()
        await asyncio.gather(*holders)


async def test_a_stream_whose_wire_closes_ends_as_a_transport_error(
    serve: Serve, wires: Any
) -> None:
    server: Server

    async def watch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(STREAM_HEAD + chunk(b"{}\n"))
        await writer.drain()
        await server.wait_hang_up(reader)

    server, url = await serve(watch)
    wire = wires(None)
    with pytest.raises(httpx2.TransportError):
        async with wire.stream("GET", url + "/watch", headers={}, timeout=TIMEOUT) as got:
            async for _ in got.lines():
                await wire.aclose()


# --- errors: httpx2's, on both paths -------------------------------------------------------


Get = Callable[[ApiWire, str, aiohttp.ClientTimeout], Awaitable[Any]]


async def _through_call(wire: ApiWire, url: str, timeout: aiohttp.ClientTimeout) -> Any:
    return await wire.call("GET", url + "/", headers={}, body=None, timeout=timeout)


async def _through_stream(wire: ApiWire, url: str, timeout: aiohttp.ClientTimeout) -> Any:
    async with wire.stream("GET", url + "/", headers={}, timeout=timeout) as got:
        return [line async for line in got.lines()]


both_paths = pytest.mark.parametrize(
    "get", [_through_call, _through_stream], ids=["call", "stream"]
)


@both_paths
async def test_refused_is_a_connect_error(get: Get, wires: Any) -> None:
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    with pytest.raises(httpx2.ConnectError) as caught:
        await get(wires(4), f"http://127.0.0.1:{port}", TIMEOUT)
    assert str(caught.value.request.url).startswith(f"http://127.0.0.1:{port}/")


@pytest.mark.parametrize(
    "sent",
    [
        b"",  # a hang-up before any answer
        b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial"',  # a cut answer
        STREAM_HEAD + chunk(b"{}\n") + b"zz\r\n",  # a stream whose chunking breaks
        b"SSH-2.0-OpenSSH\r\n\r\n",  # an answer that is not HTTP
    ],
    ids=["hang-up", "cut", "bad-chunk", "not-http"],
)
@both_paths
async def test_a_broken_answer_is_a_protocol_error(
    serve: Serve, wires: Any, sent: bytes, get: Get
) -> None:
    server: Server

    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(sent)
        await writer.drain()

    server, url = await serve(broken)
    with pytest.raises(httpx2.RemoteProtocolError):
        await get(wires(4), url, TIMEOUT)


@pytest.mark.parametrize("after_head", [False, True], ids=["no-answer", "mid-stream"])
@both_paths
async def test_silence_is_a_read_timeout(
    serve: Serve, wires: Any, get: Get, after_head: bool
) -> None:
    """A half-open connection says nothing: the read timeout names it, before an answer
    and (a watch's) between its lines."""
    server: Server

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        if after_head:
            writer.write(STREAM_HEAD + chunk(b"{}\n"))
            await writer.drain()
        await server.wait_hang_up(reader)

    server, url = await serve(silent)
    with pytest.raises(httpx2.ReadTimeout):
        await get(wires(4), url, client_timeout({"connect": 5.0, "read": 0.2}))


@pytest.mark.parametrize(
    ("given", "connect", "sock_connect", "sock_read"),
    [
        ({"connect": 10.0, "read": 30.0}, 10.0, 10.0, 30.0),
        ({"connect": 10.0, "read": 30.0, "write": 5.0, "pool": 2.0}, 12.0, 10.0, 30.0),
        ({"pool": 2.0}, 2.0, None, None),
        ({}, None, None, None),
    ],
)
def test_client_timeout_takes_httpx2s_timeouts(
    given: dict[str, float], connect: float | None, sock_connect: float | None, sock_read: float
) -> None:
    timeout = client_timeout(given)
    assert timeout.total is None  # a watch lasts as long as the server keeps it
    assert (timeout.connect, timeout.sock_connect, timeout.sock_read) == (
        connect,
        sock_connect,
        sock_read,
    )
    assert client_timeout(httpx2.Timeout(5.0, read=7.0).as_dict()).sock_read == 7.0


# --- Kube: one request path ----------------------------------------------------------------


class Login:
    """Kube's login, counted: a token read again on a 401, as a rotated service-account
    token is."""

    def __init__(self, url: str, monkeypatch: pytest.MonkeyPatch, *tokens: str) -> None:
        self.tokens = iter(tokens or ("old-token", "new-token"))
        self.url = url
        self.calls = 0
        monkeypatch.setattr("llmconn.controller.kube.login", self.login)

    def login(self) -> kopf.ConnectionInfo:
        self.calls += 1
        return kopf.ConnectionInfo(server=self.url, token=next(self.tokens))


def _status_api(server: Server, answered: dict[int, bytes] | None = None) -> Handler:
    """An API server that answers a status PATCH with the code in its body (401 to an old
    or refused token), and a body from `answered` or a Status."""

    async def api(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, body = await server.read_request(reader)
            if b"old-token" in head or b"refused-token" in head:
                code = 401
            else:
                code = int(json.loads(body)["status"]["code"])
            doc = (answered or {}).get(code, b'{"kind": "Status"}')
            writer.write(
                answer(code, doc, "Content-Type: application/json", "Retry-After: 3", reason="X")
            )
            await writer.drain()

    return api


async def test_the_status_patch_goes_out_as_the_api_server_wants_it(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    server: Server
    written = {"metadata": {"resourceVersion": "8"}, "status": {"code": 200, "msg": "é"}}
    server, url = await serve(
        lambda r, w: _status_api(server, {200: json.dumps(written).encode()})(r, w)
    )
    login = Login(url + "/prefix/", monkeypatch)  # a server URL with a path, as behind a proxy
    kube = Kube()  # logs in (the monkeypatched login): the token it read goes out
    try:
        got = await kube.patch_status("ns", "c1", {"code": 200, "msg": "é"}, "7")
    finally:
        await kube.aclose()
    assert got == written
    # The old token was refused once; the operator logged in again and sent the PATCH again.
    assert len(server.requests) == 2 and login.calls == 2
    head, _, body = server.requests[1].partition(b"\r\n\r\n")
    lines = head.decode().lower().split("\r\n")
    assert lines[0] == (
        "patch /prefix/apis/llmconn.dev/v1alpha1/namespaces/ns/llmconnections/c1/status http/1.1"
    )
    assert "authorization: bearer new-token" in lines
    assert "content-type: application/merge-patch+json" in lines
    assert "accept: application/json" in lines
    assert "user-agent: llmconn-operator" in lines
    assert sum(line.startswith(("host:", "content-length:")) for line in lines) == 2
    assert json.loads(body) == {
        "status": {"code": 200, "msg": "é"},
        "metadata": {"resourceVersion": "7"},
    }


async def test_a_401_logs_in_again_once_only(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    server: Server
    server, url = await serve(lambda r, w: _status_api(server)(r, w))
    login = Login(url, monkeypatch, "old-token", "refused-token", "never-read")
    kube = Kube()
    try:
        with pytest.raises(httpx2.HTTPStatusError) as caught:
            await kube.patch_status("ns", "c1", {"code": 200})
    finally:
        await kube.aclose()
    assert caught.value.response.status_code == 401
    assert len(server.requests) == 2 and login.calls == 2


@pytest.mark.parametrize(
    ("given", "relogin", "renewed"),
    [
        (True, None, False),  # credentials given (tests): fixed
        (True, True, True),  # ...unless asked (the operator passes Kopf's login)
        (False, None, True),  # logged in here: again on a 401
        (False, False, False),
    ],
)
async def test_who_logs_in_again_after_a_401(
    serve: Serve,
    monkeypatch: pytest.MonkeyPatch,
    given: bool,
    relogin: bool | None,
    renewed: bool,
) -> None:
    server: Server
    server, url = await serve(lambda r, w: _status_api(server)(r, w))
    # Given credentials hold the old token; a login reads the old one first, then the new.
    login = Login(url, monkeypatch, *(["new-token"] if given else []))
    info = kopf.ConnectionInfo(server=url, token="old-token") if given else None
    kube = Kube(info, relogin=relogin)
    try:
        if renewed:
            await kube.patch_status("ns", "c1", {"code": 200})
        else:
            with pytest.raises(httpx2.HTTPStatusError) as caught:
                await kube.patch_status("ns", "c1", {"code": 200})
            assert caught.value.response.status_code == 401
    finally:
        await kube.aclose()
    assert len(server.requests) == (2 if renewed else 1)
    assert login.calls == (0 if given else 1) + (1 if renewed else 0)


@pytest.mark.parametrize(
    ("code", "raised"),
    [
        (404, NotFound),
        (409, Conflict),
        (410, Gone),
        (403, httpx2.HTTPStatusError),
        (422, httpx2.HTTPStatusError),
        (429, httpx2.HTTPStatusError),
        (500, httpx2.HTTPStatusError),
    ],
)
async def test_a_refused_request_raises_what_callers_catch(
    serve: Serve, code: int, raised: type[Exception]
) -> None:
    server: Server
    server, url = await serve(lambda r, w: _status_api(server)(r, w))
    kube = Kube(kopf.ConnectionInfo(server=url, token="t"))
    try:
        with pytest.raises(raised) as caught:
            await kube.patch_status("ns", "c1", {"code": code})
    finally:
        await kube.aclose()
    if isinstance(caught.value, httpx2.HTTPStatusError):
        response = caught.value.response
        assert response.status_code == code
        assert response.headers["retry-after"] == "3"  # what a 429's wait is read from
        assert response.json() == {"kind": "Status"}
        assert caught.value.request.method == "PATCH"
        assert caught.value.request.url.path.endswith("/namespaces/ns/llmconnections/c1/status")
    else:
        assert str(caught.value) == "ns/c1"


async def test_a_read_of_what_is_not_there_is_none(serve: Serve) -> None:
    server: Server

    async def api(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_request(reader)
            writer.write(answer(404, b'{"kind": "Status", "code": 404}', reason="Not Found"))
            await writer.drain()

    server, url = await serve(api)
    kube = Kube(kopf.ConnectionInfo(server=url, token="t"))
    try:
        assert await kube.get_connection("ns", "c1") is None
        assert await kube.get_secret("ns", "s1") is None
    finally:
        await kube.aclose()
    assert len(server.requests) == 2


# --- periodic status writes: PLANNED_WRITES in flight, urgent ones apart --------------------


async def test_periodic_status_writes_are_bounded_and_urgent_ones_are_not(serve: Serve) -> None:
    server: Server
    tickets = asyncio.Semaphore(0)  # one per periodic write the server may answer
    held: list[str] = []  # periodic writes that reached the server and wait for a ticket
    names = iter(range(1000))

    async def api(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head, body = await server.read_request(reader)
            name = head.split(b"/llmconnections/")[1].split(b"/")[0].decode()
            if name.startswith("planned-"):
                held.append(name)
                await server.notify()
                await tickets.acquire()  # an API server that has slowed down
                held.remove(name)
            status = json.loads(body)["status"]
            doc = {"metadata": {"resourceVersion": str(next(names))}, "status": status}
            writer.write(answer(200, json.dumps(doc).encode(), "Content-Type: application/json"))
            await writer.drain()

    server, url = await serve(api)
    kube = Kube(kopf.ConnectionInfo(server=url, token="t"))
    writer = StatusWriter(kube, Metrics())
    periodic = 10

    def conn(name: str) -> Conn:
        return Conn(namespace="ns", name=name, uid=f"uid-{name}", resource_version="1")

    def compute(prev: dict[str, Any]) -> dict[str, Any]:
        return {"observedGeneration": 1}

    try:
        planned = [
            asyncio.create_task(writer.write(conn(f"planned-{n}"), compute))
            for n in range(periodic)
        ]
        # The documented six reach the API server and are stuck there...
        await server.until(lambda: len(held) == 6)
        # ...and a user's change still goes out and is written meanwhile, on a free connection.
        urgent = conn("urgent")
        async with asyncio.timeout(GUARD):
            assert await writer.write(urgent, compute, urgent=True) == ({}, compute({}))
        assert urgent.status == {"observedGeneration": 1}
        # The seventh periodic write waited all along: it was never sent.
        assert len(held) == 6 and not any(task.done() for task in planned)
        assert len(server.requests) == 6 + 1
        # One is answered: the seventh takes its place, and only it.
        tickets.release()
        await server.until(lambda: len(server.requests) == 6 + 1 + 1)
        await server.until(lambda: len(held) == 6)
        for _ in range(periodic):
            tickets.release()
        async with asyncio.timeout(GUARD):
            results = await asyncio.gather(*planned)
    finally:
        for _ in range(periodic):
            tickets.release()
        await kube.aclose()
    assert PLANNED_WRITES == 6  # what docs/development.md states and measured
    assert all(result == ({}, compute({})) for result in results)
    assert len(server.requests) == periodic + 1
