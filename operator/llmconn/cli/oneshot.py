"""One-shot validation of manifests without a cluster: the engine behind `llmconn validate`.

The input is what a user would `kubectl apply`: multi-document YAML holding LLMConnections
and the Secrets their refs resolve against (by name, within the same namespace; namespace
"default" when a manifest names none). `kind: List` documents are unpacked; other kinds are
reported and skipped. Anything that makes the input unusable raises `InputError`; a missing
Secret is not an input error but a verdict, as it would be in a cluster.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import yaml

from llmconn.model import status as status_mod
from llmconn.model.spec import LLMConnectionSpec
from llmconn.model.verdict import Defaults, SecretData, Verdict
from llmconn.net.egress import EgressPolicy
from llmconn.net.pool import ClientPool
from llmconn.probes import parse_spec
from llmconn.validation.validate import validate

API_VERSION = "llmconn.dev/v1alpha1"
DEFAULT_NAMESPACE = "default"


class InputError(Exception):
    """The input cannot be validated at all (exit code 2)."""


@dataclass(frozen=True)
class Connection:
    name: str
    namespace: str
    spec: LLMConnectionSpec
    generation: int
    source: str  # "file.yaml, document 2", for messages


@dataclass
class Manifests:
    connections: list[Connection] = field(default_factory=list)
    secrets: dict[tuple[str, str], SecretData] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # "Deployment default/web (file, doc 3)"


# What `llmconn validate` says of a connection with spec.identity, which it does not probe.
NEEDS_CLUSTER = (
    "not validated: spec.identity needs a cluster (the operator mints a token for the "
    "ServiceAccount there and exchanges it at the cloud); apply it to a cluster and read "
    "its status, or validate a static-key form here"
)


@dataclass(frozen=True)
class Outcome:
    connection: Connection
    verdict: Verdict | None  # None: suspended or needing a cluster, not validated
    status: dict[str, Any]  # what the operator would write after this validation
    note: str | None = None  # why it was not validated, when it was not suspended


class MemorySecrets:
    """A `SecretSource` over the Secrets of one namespace from the input."""

    def __init__(self, secrets: Mapping[tuple[str, str], SecretData], namespace: str) -> None:
        self._secrets = secrets
        self._namespace = namespace

    async def get(self, name: str) -> SecretData | None:
        return self._secrets.get((self._namespace, name))


# --- reading ---------------------------------------------------------------------------


def load(paths: Sequence[str], read_stdin: Callable[[], str] | None = None) -> Manifests:
    """Read every file ("-" is standard input) into one set of manifests."""
    manifests = Manifests()
    seen: dict[tuple[str, str, str], str] = {}
    for path in paths:
        if path == "-":
            if read_stdin is None:
                raise InputError("cannot read standard input here")
            text, label = read_stdin(), "<stdin>"
        else:
            label = path
            try:
                text = Path(path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise InputError(f"{path}: cannot read: {_os_text(exc)}") from None
        for where, doc in _documents(text, label):
            _add(manifests, seen, where, doc)
    if not manifests.connections:
        raise InputError(
            f"no LLMConnection in {', '.join('<stdin>' if p == '-' else p for p in paths)}"
        )
    return manifests


def _os_text(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8 text"
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__


class _AsKubectlReads(yaml.SafeLoader):
    """YAML as kubectl reads it: an unquoted date or time stays text (kubectl turns YAML into
    JSON, which has no timestamps), so `apiVersion: 2024-10-21` is the string it is there."""


_AsKubectlReads.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _without_nulls(value: Any) -> Any:
    """A spec as the API server stores it: a field set to null (`tls:` left empty) is
    dropped, as the API server prunes it, instead of failing as a value of the wrong type."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _documents(text: str, label: str) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        docs = list(yaml.load_all(text, Loader=_AsKubectlReads))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise InputError(f"{label}: not valid YAML{at}: {problem}") from None
    for index, doc in enumerate(docs, start=1):
        where = f"{label}, document {index}"
        if doc is None:
            continue
        if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind"):
            raise InputError(f"{where}: not a Kubernetes manifest (no apiVersion and kind)")
        if doc["kind"] == "List" and isinstance(doc.get("items"), list):
            for item_index, item in enumerate(doc["items"], start=1):
                item_where = f"{where}, item {item_index}"
                if not isinstance(item, dict) or not item.get("apiVersion") or not item.get("kind"):
                    raise InputError(f"{item_where}: not a Kubernetes manifest")
                yield item_where, item
        else:
            yield where, doc


def _metadata(doc: dict[str, Any], where: str) -> tuple[str, str, dict[str, Any]]:
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        raise InputError(f"{where}: {doc['kind']} has no metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise InputError(f"{where}: {doc['kind']} has no metadata.name")
    namespace = meta.get("namespace") or DEFAULT_NAMESPACE
    if not isinstance(namespace, str):
        raise InputError(f"{where}: metadata.namespace must be a string")
    return name, namespace, meta


def _add(
    manifests: Manifests, seen: dict[tuple[str, str, str], str], where: str, doc: dict[str, Any]
) -> None:
    kind, api = doc["kind"], doc["apiVersion"]
    if kind == "LLMConnection" and api.startswith("llmconn.dev/"):
        if api != API_VERSION:
            raise InputError(f"{where}: apiVersion {api} is not served; use {API_VERSION}")
        name, namespace, meta = _metadata(doc, where)
        _once(seen, (kind, namespace, name), where)
        manifests.connections.append(
            Connection(
                name=name,
                namespace=namespace,
                spec=_spec(doc, where, f"{namespace}/{name}"),
                generation=int(meta.get("generation") or 1),
                source=where,
            )
        )
    elif kind == "Secret" and api == "v1":
        name, namespace, meta = _metadata(doc, where)
        _once(seen, (kind, namespace, name), where)
        manifests.secrets[(namespace, name)] = SecretData(
            data=_secret_data(doc, where), resource_version=meta.get("resourceVersion")
        )
    else:
        other = doc.get("metadata")
        name = other.get("name", "?") if isinstance(other, dict) else "?"
        manifests.skipped.append(f"{kind} {name} ({where})")


def _once(seen: dict[tuple[str, str, str], str], key: tuple[str, str, str], where: str) -> None:
    if key in seen:
        kind, namespace, name = key
        raise InputError(f"{kind} {namespace}/{name} is defined twice ({seen[key]}; {where})")
    seen[key] = where


def _spec(doc: dict[str, Any], where: str, ref: str) -> LLMConnectionSpec:
    raw = doc.get("spec")
    if not isinstance(raw, dict):
        raise InputError(f"{where}: LLMConnection {ref} has no spec")
    try:
        return parse_spec(_without_nulls(raw))
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(['spec', *map(str, error['loc'])])}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
        raise InputError(f"{where}: LLMConnection {ref} is invalid: {problems}") from None


def _secret_data(doc: dict[str, Any], where: str) -> dict[str, bytes]:
    data: dict[str, bytes] = {}
    for key, value in (doc.get("data") or {}).items():
        try:
            data[str(key)] = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"{where}: Secret data.{key} is not valid base64") from None
    for key, value in (doc.get("stringData") or {}).items():
        if not isinstance(value, str | int | float | bool):
            raise InputError(f"{where}: Secret stringData.{key} must be a string")
        data[str(key)] = str(value).encode()  # stringData wins over data, as in Kubernetes
    return data


# --- validating ------------------------------------------------------------------------


async def validate_all(
    manifests: Manifests,
    defaults: Defaults,
    egress: EgressPolicy,
    *,
    concurrency: int = 16,
    progress: Callable[[int, int], None] | None = None,
    pool: ClientPool | None = None,
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
) -> list[Outcome]:
    """Validate every connection (bounded concurrency), in input order."""
    own_pool = pool is None
    clients = ClientPool(egress) if pool is None else pool
    limit = asyncio.Semaphore(concurrency)
    done = 0
    total = len(manifests.connections)

    async def one(conn: Connection) -> Outcome:
        nonlocal done
        if conn.spec.suspend:
            outcome = Outcome(conn, None, status_mod.suspended_status(None, conn.generation, now()))
        elif conn.spec.identity is not None:
            outcome = Outcome(conn, None, {}, note=NEEDS_CLUSTER)
        else:
            async with limit:
                source = MemorySecrets(manifests.secrets, conn.namespace)
                verdict = await validate(conn.spec, source, clients, defaults, now=now)
            status = status_mod.next_status(
                None,
                verdict,
                generation=conn.generation,
                requested_at=None,
                secret_grace_over=False,  # a connection just applied is within its grace
            )
            outcome = Outcome(conn, verdict, status)
        done += 1
        if progress is not None:
            progress(done, total)
        return outcome

    try:
        return list(await asyncio.gather(*(one(c) for c in manifests.connections)))
    finally:
        if own_pool:
            await clients.aclose()


def exit_code(outcomes: Sequence[Outcome]) -> int:
    """0 when every validated connection succeeded, else 1 (suspended ones and those that
    need a cluster do not count)."""
    failed = any(o.verdict is not None and o.verdict.result.value != "success" for o in outcomes)
    return 1 if failed else 0
