"""One probe's HTTP: every request it makes, its own or an SDK's, through one transport.

`ProbeTransport` puts the shared, pooled client (`llmconn.net.pool`: egress policy, TLS, body
cap) in front of one probe. On every request it marks the network phase and times it
(httpcore's trace events, and the egress backend's `dns` and `connect` marks through
`PHASE_RECORDER`), and records the answer's request id and headroom headers, in the probe's
recorder. It follows no redirect itself, so an SDK client built on it (the MCP probe's) gets
the same phases and records without the probe's help.

`ProbeTransport.fetch` is the request of the native probes: it follows same-origin redirects
(at most MAX_REDIRECTS) and reads the whole answer. A redirect to another origin is never
followed, since the provider's credentials would go with it (`RedirectRefused`); an answer
the pool's transport could not read (too large, badly encoded) is `UnreadableAnswer`.
`llmconn.validation.classify` names both for the user.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

import httpx2

from llmconn.net.bodies import ResponseTooLarge
from llmconn.net.guard import PHASE_RECORDER, Phase, PhaseRecorder

MAX_REDIRECTS = 3
try:
    USER_AGENT = f"llmconn/{version('llmconn')}"
except PackageNotFoundError:  # run from a source tree that was never installed
    USER_AGENT = "llmconn"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})

# Response headers worth keeping, by provider dialect: request ids first hit wins.
REQUEST_ID_HEADERS = (
    "x-request-id",
    "request-id",
    "apim-request-id",
    "x-dashscope-request-id",
    "x-amzn-requestid",
)
HEADROOM_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
EXTRA_DETAIL_HEADERS = {"x-ms-region": "region"}

# httpcore trace events ("connection.connect_tcp.started", "http11.send_request_headers.
# complete", ...) by the phase they belong to. The lookup runs inside connect_tcp: the
# backend marks it (llmconn.net.guard).
_TRACED = {
    "connection.connect_tcp": Phase.CONNECT,
    "connection.start_tls": Phase.TLS,
    "http11.send_request_headers": Phase.REQUEST,
    "http11.send_request_body": Phase.REQUEST,
    "http11.receive_response_headers": Phase.RESPONSE,
    "http2.send_request_headers": Phase.REQUEST,
    "http2.receive_response_headers": Phase.RESPONSE,
}


# Signs a request as it goes out (AWS SigV4): the request's own URL, headers and body are
# what is signed, so a redirected request is signed again for its new URL.
Signer = Callable[[httpx2.Request], None]


class Recorder(PhaseRecorder, Protocol):
    """Where a probe's transport writes: the probe's findings (`llmconn.probes.base`)."""

    request_id: str | None
    details: dict[str, str]


class RedirectRefused(Exception):
    """A redirect a probe does not follow; nothing was sent where it points."""

    def __init__(self, status: int, detail: str, *, too_many: bool = False) -> None:
        super().__init__(f"redirected {detail}")
        self.status = status
        self.detail = detail  # "(HTTP 307) to another host (x); credentials ...", for messages
        self.too_many = too_many


class UnreadableAnswer(Exception):
    """The pool's transport could not read an answer: too large, or badly encoded."""

    def __init__(self, method: str, path: str, status: int, what: str) -> None:
        super().__init__(f"the answer to {method} {path} was {what}")
        self.method = method
        self.path = path
        self.status = status
        self.what = what  # "larger than 1 MiB once decoded (gzip)", for messages


@dataclass(frozen=True)
class Reply:
    """One answer, read whole (decoded and bounded below, by the pool's transport)."""

    status: int
    headers: httpx2.Headers
    content: bytes
    url: str

    def json(self) -> Any:
        """The parsed body, or None when it is not JSON."""
        try:
            return json.loads(self.content)
        except (ValueError, UnicodeDecodeError, RecursionError):  # "[[[[..." nests too deep
            return None

    @property
    def is_html(self) -> bool:
        ctype = self.headers.get("content-type", "")
        head = self.content[:256].lstrip().lower()
        return "html" in ctype or head.startswith((b"<!doctype", b"<html"))

    def text(self, limit: int = 300) -> str:
        return self.content[:limit].decode("utf-8", "replace")


def camel(header: str) -> str:
    """x-ratelimit-remaining-requests -> rateLimitRemainingRequests (status.details keys)."""
    header = header.removeprefix("x-")
    parts = header.replace("ratelimit", "rate-limit").split("-")
    return parts[0] + "".join(p.capitalize() for p in parts[1:])


class ProbeTransport(httpx2.AsyncBaseTransport):
    """The shared client, for one probe: every request traced, every answer recorded."""

    def __init__(self, client: httpx2.AsyncClient, recorder: Recorder) -> None:
        self.client = client
        self._recorder = recorder

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        request.extensions = {**request.extensions, "trace": _Tracer(self._recorder)}
        self._recorder.phase = Phase.REQUEST
        # The backend marks dns and connect in this task, where the pool connects.
        token = PHASE_RECORDER.set(self._recorder)
        try:
            response = await self.client.send(request, stream=True, follow_redirects=False)
        finally:
            PHASE_RECORDER.reset(token)
        self._recorder.phase = Phase.RESPONSE  # the body is read next
        self._record(response.headers)
        return httpx2.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=response.stream,
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        pass  # the shared client outlives the probe

    async def fetch(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        json_body: Any = None,
        params: Mapping[str, str] | None = None,
        content: bytes | None = None,
        sign: Signer | None = None,
    ) -> Reply:
        """Send a request and read its answer, following same-origin redirects (bounded)."""
        origin = _origin(url)
        for _hop in range(MAX_REDIRECTS + 1):
            reply = await self._read(method, url, headers, json_body, params, content, sign)
            location = reply.headers.get("location")
            if reply.status not in _REDIRECTS or not location:
                return reply
            status = reply.status
            try:
                target = urljoin(url, location)
                target_origin = _origin(target)  # .port raises for a port out of range
            except ValueError:
                detail = f"(HTTP {status}) to a URL that cannot be parsed"
                raise RedirectRefused(status, detail) from None
            if target_origin != origin:
                raise RedirectRefused(
                    status,
                    f"(HTTP {status}) to another host ({urlsplit(target).hostname}); "
                    "credentials are never sent there",
                )
            url, params = target, None
            if status == 303:
                method, json_body, content = "GET", None, None
        raise RedirectRefused(reply.status, f"more than {MAX_REDIRECTS} times", too_many=True)

    async def _read(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        json_body: Any,
        params: Mapping[str, str] | None,
        content: bytes | None = None,
        sign: Signer | None = None,
    ) -> Reply:
        request = self.client.build_request(
            method, url, headers=headers, json=json_body, params=params, content=content
        )
        if sign is not None:
            sign(request)
        response = await self.handle_async_request(request)
        try:
            body = await response.aread()
        except httpx2.DecodingError as exc:
            what = exc.what if isinstance(exc, ResponseTooLarge) else f"not readable: {exc}"
            path = urlsplit(url).path
            raise UnreadableAnswer(method, path, response.status_code, what) from None
        finally:
            await response.aclose()
        self._recorder.phase = Phase.DONE
        return Reply(response.status_code, response.headers, body, url)

    def _record(self, headers: httpx2.Headers) -> None:
        for name in REQUEST_ID_HEADERS:
            if value := headers.get(name):
                self._recorder.request_id = value[:128]
                break
        for name, value in headers.items():
            lname = name.lower()
            if lname.startswith(HEADROOM_PREFIXES):
                self._recorder.details[camel(lname)] = value[:64]
            elif lname in EXTRA_DETAIL_HEADERS:
                self._recorder.details[EXTRA_DETAIL_HEADERS[lname]] = value[:64]


class _Tracer:
    """httpcore's trace events for one request -> the recorder's phase, and time per phase."""

    def __init__(self, recorder: PhaseRecorder) -> None:
        self._recorder = recorder
        self._started: dict[Phase, float] = {}

    async def __call__(self, event: str, info: Mapping[str, Any]) -> None:
        name, _, stage = event.rpartition(".")
        phase = _TRACED.get(name)
        if phase is None:
            return
        now = time.perf_counter()
        if stage == "started":
            self._recorder.phase = phase
            self._started[phase] = now
        elif stage in ("complete", "failed"):
            start = self._started.pop(phase, None)
            if start is not None:
                spent = self._recorder.phase_ms
                spent[phase] = spent.get(phase, 0.0) + (now - start) * 1000


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port
