"""The Kubernetes API calls the operator makes itself: one status PATCH per validation,
Secret reads, the lists and watches of watches.py (Secrets as metadata only), and Events on
transitions.

These calls are ours so that each validation is exactly one write, so that Secrets are
watched without their data, and so that a watch event costs no more than its parsing. The client
logs in the way Kopf does (service account in a pod, else $KUBECONFIG) and reuses Kopf's
TLS and header construction from its ConnectionInfo.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import logging
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import quote

import httpx2
import kopf

from llmconn import logs
from llmconn.transport import AiohttpTransport, client_timeout
from llmconn.verdict import SecretData, TokenRefused

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "llmconn.dev", "v1alpha1", "llmconnections"
# The shortest token TokenRequest grants (10 minutes): it serves one validation.
TOKEN_SECONDS = 600
# Metadata-only representations of a list and of a watch event's object.
META_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
META_WATCH = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
# Connections to the API server for requests (each watch holds one more of its own). A status
# PATCH takes milliseconds, so 16 carry hundreds of writes a second; each open TLS connection
# costs memory.
API_CONNECTIONS = 16
# Of those, periodic validations' status writes use at most these. One takes milliseconds, so
# a few carry hundreds a second. When the API server slows down (while a burst of creates is
# validated again, say), the rest wait here, and a new or changed connection's write (urgent)
# neither queues behind them nor shares the API server with sixteen of them, as the scheduler
# keeps workers for urgent keys. Measured at 10,000 connections (reaction p99): 0.41-0.93 s
# with no limit, 0.22-0.27 s with 12, 0.04-0.12 s with 6; schedule lag p99 then rises from
# 0.1 s to 2 s, periodic validations waiting their turn (docs/development.md).
PLANNED_WRITES = 6
API_TIMEOUT = httpx2.Timeout(30.0, connect=10.0)
_WIRE_TIMEOUT = client_timeout(API_TIMEOUT.as_dict())


# Object names (DNS-1123 subdomains) and namespaces (DNS-1123 labels) as the API server
# accepts them. Every name that goes into a path is checked against these first, so a name
# such as "../../other/secrets/x" (from an object admitted by an older CRD, say) can never
# reach another namespace's objects.
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


class NotFound(Exception):
    """The object is gone (deleted while we worked)."""


class Conflict(Exception):
    """409: the object changed since the resourceVersion the write was based on."""


class Gone(Exception):
    """410 Gone: the resourceVersion or continue token is too old; list again."""


class InvalidName(ValueError):
    """A name or namespace that is not one the API server could hold; no request was sent."""


def segment(value: str, *, namespace: bool = False) -> str:
    """A path segment for an object name (or a namespace), checked and percent-quoted."""
    pattern, limit = (_LABEL, 63) if namespace else (_SUBDOMAIN, 253)
    if not isinstance(value, str) or len(value) > limit or not pattern.fullmatch(value):
        kind = "namespace" if namespace else "object name"
        raise InvalidName(f"not a valid {kind}: {value!r}"[:300])
    return quote(value, safe="")


def object_path(namespace: str, resource: str, name: str, *, api: str = "/api/v1") -> str:
    """/api/v1/namespaces/NS/RESOURCE/NAME from checked segments only."""
    return f"{api}/namespaces/{segment(namespace, namespace=True)}/{resource}/{segment(name)}"


def connections_path(namespace: str | None) -> str:
    """The LLMConnections of one namespace, or (None) of all."""
    where = f"/namespaces/{segment(namespace, namespace=True)}" if namespace else ""
    return f"/apis/{GROUP}/{VERSION}{where}/{PLURAL}"


def login() -> kopf.ConnectionInfo:
    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
        settings=settings
    )
    if info is None:
        raise kopf.LoginError("no service account and no $KUBECONFIG or ~/.kube/config")
    return info


class Kube:
    def __init__(
        self,
        info: kopf.ConnectionInfo | None = None,
        *,
        instance: str = "llmconn",
    ):
        self._info = info
        self.instance = instance[:128]  # Events' reportingInstance: this replica
        self._planned_writes = asyncio.Semaphore(PLANNED_WRITES)
        self._connect(info or login())

    def _connect(self, info: kopf.ConnectionInfo) -> None:
        for value in info.as_http_headers().values():
            logs.protect(value)  # the operator's own token never reaches a log
        tls = info.as_ssl_context()
        self._server = info.server.rstrip("/")
        self._headers = {**info.as_http_headers(), "User-Agent": "llmconn-operator"}
        # aiohttp's pool and parser under httpx2's client (transport.py): a third of the CPU
        # per request of httpx2's own HTTP/2 or HTTP/1.1 connections. The status PATCH takes
        # the same wire without httpx2's client (`_send_json`). Watches get a client of their
        # own with no bound on connections: each holds one.
        self._wire = AiohttpTransport(tls, API_CONNECTIONS)
        self._client = self._make_client(self._wire)
        self._streams = self._make_client(AiohttpTransport(tls, None))

    def _make_client(self, transport: AiohttpTransport) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(
            base_url=self._server,
            transport=transport,
            headers=self._headers,
            timeout=API_TIMEOUT,
            trust_env=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()  # and the wire under it
        await self._streams.aclose()

    async def _call(self, method: str, url: str, **kwargs: Any) -> httpx2.Response:
        response = await self._client.request(method, url, **kwargs)
        if response.status_code == 401 and await self._relogin():
            response = await self._client.request(method, url, **kwargs)
        return response

    async def _send_json(
        self, method: str, path: str, body: dict[str, Any], content_type: str, *, what: str
    ) -> dict[str, Any]:
        """`_call` for a JSON request and answer, straight on the wire: the status PATCH of
        every validation. Raises as `_call` followed by `raise_for_status` would (NotFound
        and Conflict for 404 and 409, naming `what`)."""
        data = json.dumps(body, ensure_ascii=False, allow_nan=False).encode()

        async def send() -> tuple[int, bytes]:
            headers = {**self._headers, "Content-Type": content_type, "Accept": "application/json"}
            return await self._wire.call(
                method, self._server + path, headers=headers, body=data, timeout=_WIRE_TIMEOUT
            )

        status, answer = await send()
        if status == 401 and await self._relogin():
            status, answer = await send()
        if status == 404:
            raise NotFound(what)
        if status == 409:
            raise Conflict(what)
        if status >= 400:
            request = httpx2.Request(method, self._server + path)
            response = httpx2.Response(status, content=answer, request=request)
            response.raise_for_status()  # httpx2's HTTPStatusError, as from `_call`
        written: dict[str, Any] = json.loads(answer)
        return written

    async def _relogin(self) -> bool:
        """A projected service-account token rotates on disk: log in again (not when the
        credentials were given, as in tests)."""
        if self._info is not None:
            return False
        await self.aclose()
        self._connect(login())
        return True

    async def patch_status(
        self,
        namespace: str,
        name: str,
        status: dict[str, Any],
        resource_version: str | None = None,
        *,
        urgent: bool = False,
    ) -> dict[str, Any]:
        """Merge-patch the status subresource in one request; returns the object written.
        Writes that are not `urgent` are PLANNED_WRITES in flight at most.

        With `resource_version`, the write is conditional on it (Conflict otherwise): a
        verdict about one object never lands on its replacement, nor on a status that
        another replica moved on. (A UID in a status patch is not checked by the API server:
        the resourceVersion is the precondition that is.)"""
        url = object_path(namespace, PLURAL, name, api=f"/apis/{GROUP}/{VERSION}") + "/status"
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        async with contextlib.nullcontext() if urgent else self._planned_writes:
            return await self._send_json(
                "PATCH", url, body, "application/merge-patch+json", what=f"{namespace}/{name}"
            )

    async def get_connection(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The LLMConnection as it is now, or None when there is none."""
        url = object_path(namespace, PLURAL, name, api=f"/apis/{GROUP}/{VERSION}")
        response = await self._call("GET", url)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        obj: dict[str, Any] = response.json()
        return obj

    async def list_connections(
        self, namespace: str | None, params: dict[str, str]
    ) -> dict[str, Any]:
        """One page of LLMConnections, of one namespace or (None) of all."""
        response = await self._call("GET", connections_path(namespace), params=params)
        if response.status_code == 410:
            raise Gone(PLURAL)
        response.raise_for_status()
        page: dict[str, Any] = response.json()
        return page

    async def connections(self, namespaces: Sequence[str | None]) -> AsyncIterator[dict[str, Any]]:
        """Every LLMConnection of these namespaces (none given: of all), page by page."""
        for namespace in namespaces or [None]:
            params: dict[str, str] = {"limit": "500"}
            while True:
                page = await self.list_connections(namespace, params)
                for obj in page.get("items") or []:
                    yield obj
                token = (page.get("metadata") or {}).get("continue")
                if not token:
                    break
                params = {"limit": "500", "continue": token}

    async def watch(self, path: str, name: str) -> AsyncIterator[dict[str, Any]]:
        """The named object in the collection at `path`, as it is now and after each change
        ({} once deleted), until the server ends the watch."""
        # The server ends the watch after timeoutSeconds; a stream silent for longer than
        # that is dead (a half-open connection), and the read timeout says so.
        params = {"watch": "1", "fieldSelector": f"metadata.name={name}", "timeoutSeconds": "60"}
        timeout = httpx2.Timeout(10.0, read=90.0)
        async with self._streams.stream("GET", path, params=params, timeout=timeout) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line:
                    event = json.loads(line)
                    yield {} if event.get("type") == "DELETED" else event.get("object") or {}

    async def list_metadata(
        self, path: str, params: dict[str, str], *, whole: bool = False
    ) -> dict[str, Any]:
        """One page of the collection at `path`, as metadata only (PartialObjectMetadataList:
        no Secret data crosses the wire), or with `whole` as whole objects. Raises Gone for
        an expired continue token."""
        headers = {} if whole else {"Accept": META_LIST}
        response = await self._call("GET", path, params=params, headers=headers)
        if response.status_code == 410:
            raise Gone(path)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    async def watch_metadata(
        self, path: str, params: dict[str, str], read_timeout: float, *, whole: bool = False
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events of the collection at `path` with metadata-only objects (with `whole`,
        whole objects), until the server ends the stream. `read_timeout` bounds the silence
        between two chunks, so a connection that died without a word is noticed. Raises Gone
        for a resourceVersion the server no longer has (an ERROR event with code 410 is left
        to the caller)."""
        timeout = httpx2.Timeout(30.0, connect=10.0, read=read_timeout)
        query = {**params, "watch": "true"}
        headers = {} if whole else {"Accept": META_WATCH}
        async with self._streams.stream(
            "GET", path, params=query, headers=headers, timeout=timeout
        ) as response:
            if response.status_code == 410:
                raise Gone(path)
            if response.status_code == 401:
                await self._relogin()
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line:
                    event: dict[str, Any] = json.loads(line)
                    yield event

    async def get_secret(self, namespace: str, name: str) -> SecretData | None:
        response = await self._call("GET", object_path(namespace, "secrets", name))
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return secret_data(response.json())

    async def service_account_token(self, namespace: str, name: str, audience: str) -> str | None:
        """Mint a token for a ServiceAccount (TokenRequest, the `token` subresource), with one
        audience, valid TOKEN_SECONDS; None when the ServiceAccount does not exist. Nothing is
        stored by the API server, and nothing here keeps it."""
        url = object_path(namespace, "serviceaccounts", name) + "/token"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": [audience], "expirationSeconds": TOKEN_SECONDS},
        }
        response = await self._call("POST", url, json=body)
        if response.status_code == 404:
            return None
        if response.status_code in (400, 403, 422):
            raise TokenRefused(response.status_code, _status_message(response))
        response.raise_for_status()
        token = (response.json().get("status") or {}).get("token")
        if not isinstance(token, str) or not token:
            raise httpx2.DecodingError("a TokenRequest answered without a token")
        return token

    async def post_event(
        self,
        obj: dict[str, Any],
        *,
        type_: str,
        reason: str,
        message: str,
    ) -> None:
        """A core/v1 Event about the connection (transitions only). Best-effort."""
        meta = obj.get("metadata", {})
        namespace = meta.get("namespace", "default")
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{meta.get('name', 'llmconnection')}.",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "LLMConnection",
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": "llmconn"},
            "reportingComponent": "llmconn.dev/operator",
            "reportingInstance": self.instance,
        }
        try:
            response = await self._call(
                "POST",
                f"/api/v1/namespaces/{segment(namespace, namespace=True)}/events",
                json=event,
            )
            if response.status_code >= 300:
                log.warning("could not post event %s: HTTP %s", reason, response.status_code)
        except httpx2.HTTPError as exc:
            log.warning("could not post event %s: %s", reason, type(exc).__name__)


class ServiceAccountTokens:
    """A `TokenSource` for one namespace: the connection's own."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self._kube = kube
        self._namespace = namespace

    async def token(self, service_account: str, audience: str) -> str | None:
        return await self._kube.service_account_token(self._namespace, service_account, audience)


def _status_message(response: httpx2.Response) -> str:
    """The message of an API server's Status answer ("... is forbidden: User ... cannot
    create resource ..."), or its reason phrase."""
    try:
        message = response.json().get("message")
    except ValueError:
        message = None
    return str(message or response.reason_phrase or response.status_code)[:512]


def secret_data(body: dict[str, Any]) -> SecretData:
    """A Secret object as the values a probe uses (data is base64 on the wire)."""
    data: dict[str, bytes] = {}
    for key, value in (body.get("data") or {}).items():
        try:
            data[key] = base64.b64decode(value or "")
        except ValueError:
            continue
    for key, value in (body.get("stringData") or {}).items():
        data[key] = str(value).encode()
    return SecretData(data=data, resource_version=body.get("metadata", {}).get("resourceVersion"))
