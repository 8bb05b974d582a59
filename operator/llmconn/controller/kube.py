"""The Kubernetes API calls the operator makes itself (Kopf makes the watch of the
connections): one status PATCH per validation, Secret reads, the list and watch of Secret
metadata (watches.py), the peering objects' watch, ServiceAccount tokens, and Events on
transitions.

These calls are ours so that each validation is exactly one write and so that Secrets are
watched without their data. The client logs in as Kopf does (kube.login: a pod's service
account, else $KUBECONFIG; handlers.py gives Kopf the same login) and takes Kopf's TLS and
header construction from its ConnectionInfo.

Its length: every call the operator makes to the API server, and the one request path and
error mapping they share, in one client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import httpx2
import kopf

from llmconn.controller.wire import Answer, ApiWire, Streamed, client_timeout
from llmconn.model import logs
from llmconn.model.text import printable
from llmconn.model.verdict import SecretData, TokenRefused

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
_TIMEOUT = client_timeout({"connect": 10.0, "read": 30.0})


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
    """The operator's API client: one request path (`_request`: one 401 re-login, one error
    mapping in `_check`), on one wire (transport.py). Watches take a second wire of their own,
    with no bound on connections: each holds one."""

    def __init__(
        self,
        info: kopf.ConnectionInfo | None = None,
        *,
        instance: str = "llmconn",
        relogin: bool | None = None,
    ):
        # A projected service-account token rotates on disk: on a 401 log in again, unless
        # the credentials were given and are fixed (tests).
        self._may_relogin = info is None if relogin is None else relogin
        self.instance = instance[:128]  # Events' reportingInstance: this replica
        self._connect(info or login())

    def _connect(self, info: kopf.ConnectionInfo) -> None:
        headers = info.as_http_headers()
        for value in headers.values():
            logs.protect(value)  # the operator's own token never reaches a log
        self._headers = {**headers, "User-Agent": "llmconn-operator", "Accept": "application/json"}
        wire = _wire_identity(info)
        if getattr(self, "_wire_of", None) == wire:
            return  # a new token for the same server and TLS: requests in flight go on
        self._wire_of = wire
        tls = info.as_ssl_context()
        self._server = info.server.rstrip("/")
        old = [w for w in (getattr(self, "_wire", None), getattr(self, "_streams", None)) if w]
        self._wire = ApiWire(tls, API_CONNECTIONS)
        self._streams = ApiWire(tls, None)
        for retired in old:  # what is in flight on them ends on its own
            task = asyncio.get_running_loop().create_task(_close_later(retired))
            _RETIRING.add(task)
            task.add_done_callback(_RETIRING.discard)

    async def aclose(self) -> None:
        await self._wire.aclose()
        await self._streams.aclose()

    async def _relogin(self) -> bool:
        """A projected service-account token rotates on disk: log in again. Open requests
        and watches are not cut: only a changed server or TLS setting takes new wires."""
        if not self._may_relogin:
            return False
        self._connect(login())
        return True

    def _url(self, path: str, params: dict[str, str] | None) -> str:
        return self._server + path + (f"?{urlencode(params)}" if params else "")

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
        accept: str | None = None,
    ) -> Answer:
        """One request, its answer read whole; after a 401, once more with fresh credentials."""
        url = self._url(path, params)
        data = None
        if body is not None:
            data = json.dumps(body, ensure_ascii=False, allow_nan=False).encode()

        async def send() -> Answer:
            headers = dict(self._headers)  # read again: a re-login replaces them
            if data is not None:
                headers["Content-Type"] = content_type
            if accept is not None:
                headers["Accept"] = accept
            return await self._wire.call(method, url, headers=headers, body=data, timeout=_TIMEOUT)

        answer = await send()
        if answer.status == 401 and await self._relogin():
            answer = await send()
        return answer

    async def _json(self, method: str, path: str, *, what: str, **kwargs: Any) -> dict[str, Any]:
        """`_request`, checked (`_check`), its JSON answer."""
        answer = await self._request(method, path, **kwargs)
        _check(answer.status, answer.headers, answer.body, method, self._url(path, None), what)
        parsed: dict[str, Any] = json.loads(answer.body)
        return parsed

    async def patch_status(
        self,
        namespace: str,
        name: str,
        status: dict[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """Merge-patch the status subresource in one request; returns the object written.

        With `resource_version`, the write is conditional on it (Conflict otherwise): a
        verdict about one object never lands on its replacement, nor on a status that
        another replica moved on. (A UID in a status patch is not checked by the API server:
        the resourceVersion is the precondition that is.)"""
        url = object_path(namespace, PLURAL, name, api=f"/apis/{GROUP}/{VERSION}") + "/status"
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return await self._json(
            "PATCH",
            url,
            body=body,
            content_type="application/merge-patch+json",
            what=f"{namespace}/{name}",
        )

    async def get_connection(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The LLMConnection as it is now, or None when there is none."""
        url = object_path(namespace, PLURAL, name, api=f"/apis/{GROUP}/{VERSION}")
        try:
            return await self._json("GET", url, what=f"{namespace}/{name}")
        except NotFound:
            return None

    @contextlib.asynccontextmanager
    async def _stream(
        self, path: str, params: dict[str, str], timeout: aiohttp.ClientTimeout, accept: str
    ) -> AsyncIterator[Streamed]:
        """A watch request whose answer is checked (`_check`) before its lines are read; a 401
        logs in again for the next one."""
        url = self._url(path, params)
        headers = {**self._headers, "Accept": accept}
        async with self._streams.stream("GET", url, headers=headers, timeout=timeout) as answer:
            if answer.status >= 400:
                body = await answer.read()  # before a re-login replaces the credentials
                if answer.status == 401:
                    await self._relogin()
                _check(answer.status, answer.headers, body, "GET", url, path)
            yield answer

    async def watch(self, path: str, name: str) -> AsyncIterator[dict[str, Any]]:
        """The named object in the collection at `path`, as it is now and after each change
        ({} once deleted), until the server ends the watch."""
        # The server ends the watch after timeoutSeconds; a stream silent for longer than
        # that is dead (a half-open connection), and the read timeout says so.
        params = {"watch": "1", "fieldSelector": f"metadata.name={name}", "timeoutSeconds": "60"}
        timeout = client_timeout({"connect": 10.0, "read": 90.0})
        async with self._stream(path, params, timeout, "application/json") as answer:
            async for line in answer.lines():
                event = json.loads(line)
                yield {} if event.get("type") == "DELETED" else event.get("object") or {}

    async def get_peering(self, path: str, name: str) -> dict[str, Any] | None:
        """The named peering object in the collection at `path` (peering.py builds it from
        the operator's own namespaces), or None when there is none."""
        try:
            return await self._json("GET", f"{path}/{segment(name)}", what=name)
        except NotFound:
            return None

    async def drop_peers(self, path: str, name: str, peers: list[str]) -> None:
        """Remove `peers`' entries from the named peering object's status (a merge patch)."""
        await self._json(
            "PATCH",
            f"{path}/{segment(name)}",
            body={"status": dict.fromkeys(peers)},
            content_type="application/merge-patch+json",
            what=name,
        )

    async def list_metadata(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        """One page of the collection at `path`, as metadata only (PartialObjectMetadataList:
        no Secret data crosses the wire). Raises Gone for an expired continue token."""
        return await self._json("GET", path, params=params, accept=META_LIST, what=path)

    async def watch_metadata(
        self, path: str, params: dict[str, str], read_timeout: float
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events of the collection at `path` with metadata-only objects, until the
        server ends the stream. `read_timeout` bounds the silence between two chunks, so a
        connection that died without a word is noticed. Raises Gone for a resourceVersion the
        server no longer has (an ERROR event with code 410 is left to the caller)."""
        timeout = client_timeout({"connect": 10.0, "read": read_timeout})
        async with self._stream(path, {**params, "watch": "true"}, timeout, META_WATCH) as answer:
            async for line in answer.lines():
                event: dict[str, Any] = json.loads(line)
                yield event

    async def get_secret(self, namespace: str, name: str) -> SecretData | None:
        try:
            body = await self._json(
                "GET", object_path(namespace, "secrets", name), what=f"{namespace}/{name}"
            )
        except NotFound:
            return None
        return secret_data(body)

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
        answer = await self._request("POST", url, body=body)
        if answer.status == 404:
            return None
        if answer.status in (400, 403, 422):
            raise TokenRefused(answer.status, _status_message(answer))
        _check(answer.status, answer.headers, answer.body, "POST", self._url(url, None), url)
        token = (json.loads(answer.body).get("status") or {}).get("token")
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
            "message": printable(message[:1024]),
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": "llmconn"},
            "reportingComponent": "llmconn.dev/operator",
            "reportingInstance": self.instance,
        }
        try:
            path = f"/api/v1/namespaces/{segment(namespace, namespace=True)}/events"
            answer = await self._request("POST", path, body=event)
            if answer.status >= 300:
                log.warning("could not post event %s: HTTP %s", reason, answer.status)
        except httpx2.HTTPError as exc:
            log.warning("could not post event %s: %s", reason, type(exc).__name__)


_RETIRING: set[asyncio.Task[None]] = set()
RETIRE_AFTER = 120.0  # seconds a replaced wire stays open for what is in flight on it


async def _close_later(wire: ApiWire) -> None:
    await asyncio.sleep(RETIRE_AFTER)
    await wire.aclose()


def _wire_identity(info: kopf.ConnectionInfo) -> tuple[object, ...]:
    """What a wire is built from: the server and the TLS material, not the token."""
    return (
        info.server,
        info.ca_path,
        info.ca_data,
        info.insecure,
        info.certificate_path,
        info.certificate_data,
        info.private_key_path,
        info.private_key_data,
    )


def _check(
    status: int, headers: Mapping[str, str], body: bytes, method: str, url: str, what: str
) -> None:
    """The one mapping of the API server's refusals: NotFound, Conflict and Gone (naming
    `what`), else httpx2's HTTPStatusError for anything from 400 on."""
    if status < 400:
        return
    if status == 404:
        raise NotFound(what)
    if status == 409:
        raise Conflict(what)
    if status == 410:
        raise Gone(what)
    request = httpx2.Request(method, url)
    response = httpx2.Response(status, headers=dict(headers), content=body, request=request)
    response.raise_for_status()


class ServiceAccountTokens:
    """A `TokenSource` for one namespace: the connection's own."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self._kube = kube
        self._namespace = namespace

    async def token(self, service_account: str, audience: str) -> str | None:
        return await self._kube.service_account_token(self._namespace, service_account, audience)


def _status_message(answer: Answer) -> str:
    """The message of an API server's Status answer ("... is forbidden: User ... cannot
    create resource ..."), or its status code."""
    try:
        message = json.loads(answer.body).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or answer.status)[:512]


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
