"""Exceptions out of a probe -> an outcome with a named reason, for every probe at once.

- A timeout is named by the phase that ran out of time: a lookup that never answers is
  DNSFailure, a connect ConnectionFailed, a handshake TLSError; waiting for or reading the
  answer (including a trickling one) is Timeout.
- A connection that breaks (reset, closed mid-answer) is ConnectionFailed; an answer that
  is not HTTP at all, a redirect off the endpoint's origin and an answer too large or badly
  encoded to read (`llmconn.net.exchange`) are UnexpectedResponse.
- The `mcp` SDK raises anyio ExceptionGroups: they are unwrapped first, and the most telling
  leaf (a probe's own failure, the egress policy, DNS, a timeout, the network) decides.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpcore2
import httpx2

from llmconn.model.fields import format_duration
from llmconn.model.reasons import Reason
from llmconn.net.exchange import RedirectRefused, UnreadableAnswer
from llmconn.net.guard import DNSLookupError, EgressDenied, Phase
from llmconn.probes.base import ProbeContext, ProbeFailure, ProbeOutcome

log = logging.getLogger(__name__)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its causes and contexts, and exceptions carried as arguments (httpcore
    wraps the original error as its first argument, and may drop the cause)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [a for a in current.args if isinstance(a, BaseException)]
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]


def _first(exc: BaseException, kind: type[BaseException] | tuple[type[BaseException], ...]) -> Any:
    return next((e for e in _chain(exc) if isinstance(e, kind)), None)


_PRIORITY: tuple[type[BaseException] | tuple[type[BaseException], ...], ...] = (
    ProbeFailure,
    (RedirectRefused, UnreadableAnswer),
    EgressDenied,
    DNSLookupError,
    (TimeoutError, httpx2.TimeoutException, httpcore2.TimeoutException),
    (httpx2.HTTPError, httpcore2.NetworkError, httpcore2.ProtocolError, OSError),
)


def classify_exception(exc: Exception, ctx: ProbeContext) -> ProbeOutcome:
    """One exception (or exception group) from a probe -> an outcome. Never raises."""
    leaves = _leaves(exc)
    leaf = next(
        (leaf for kind in _PRIORITY for leaf in leaves if isinstance(leaf, kind)), leaves[0]
    )
    # A request elsewhere (a token service) names its own host.
    parts = urlsplit(ctx.found.elsewhere or ctx.endpoint)
    host = parts.hostname or "the endpoint"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # never raise while classifying: the spec refuses such ports anyway
        port = 0
    budget = format_duration(ctx.timeout)
    phase = ctx.found.phase

    if isinstance(leaf, ProbeFailure):
        return leaf.outcome
    if isinstance(leaf, RedirectRefused):
        fix = "" if leaf.too_many else " Set spec.endpoint to the provider's real API base URL."
        who = "The endpoint"
        if ctx.found.elsewhere:
            who, fix = f"The token service at {host}", ""
        return ProbeOutcome(
            Reason.UNEXPECTED_RESPONSE,
            f"{who} redirected {leaf.detail}.{fix}",
            http_status=leaf.status,
        )
    if isinstance(leaf, UnreadableAnswer):
        return ProbeOutcome(
            Reason.UNEXPECTED_RESPONSE,
            f"The answer to {leaf.method} {leaf.path} was {leaf.what}; that is not the "
            "provider's API.",
            http_status=leaf.status,
        )
    if isinstance(leaf, EgressDenied):
        refused, fix = "the endpoint", "Use another endpoint, or ask"
        if ctx.found.elsewhere:
            refused, fix = f"the token service at {host}", "Ask"
        return ProbeOutcome(
            Reason.EGRESS_DENIED,
            f"The operator's egress policy refused {refused}: {leaf.why}. Nothing was sent. "
            f"{fix} the operator's administrator.",
        )
    if isinstance(leaf, DNSLookupError):
        check = "the token service's URL" if ctx.found.elsewhere else "spec.endpoint's host name"
        return ProbeOutcome(
            Reason.DNS_FAILURE, f"The lookup of {leaf.host} failed ({leaf.detail}). Check {check}."
        )
    if isinstance(leaf, TimeoutError | httpx2.TimeoutException | httpcore2.TimeoutException):
        return _timed_out(phase, host, port, budget)
    if (tls_error := _first(leaf, ssl.SSLError)) is not None:
        return _tls_failure(tls_error, host)
    if isinstance(leaf, httpx2.ConnectError | httpcore2.ConnectError) and phase is Phase.TLS:
        return ProbeOutcome(
            Reason.TLS_ERROR,
            f"The TLS handshake with {host} failed: the server closed the connection. "
            "Is the endpoint's scheme (https) right?",
        )
    if isinstance(leaf, httpx2.ConnectError | httpcore2.ConnectError) or (
        isinstance(leaf, OSError) and phase in (Phase.DNS, Phase.CONNECT)
    ):
        return ProbeOutcome(
            Reason.CONNECTION_FAILED, f"Could not connect to {host}:{port} ({_os_problem(leaf)})."
        )
    if isinstance(leaf, httpx2.ReadError | httpx2.WriteError | httpcore2.NetworkError) or (
        isinstance(leaf, httpx2.RemoteProtocolError | httpcore2.RemoteProtocolError)
        and any(w in str(leaf).lower() for w in ("disconnected", "peer closed", "incomplete"))
    ):
        return ProbeOutcome(
            Reason.CONNECTION_FAILED,
            f"The connection to {host}:{port} broke while "
            f"{'waiting for' if phase is not Phase.RESPONSE else 'reading'} the answer.",
        )
    if isinstance(leaf, httpx2.RemoteProtocolError | httpcore2.RemoteProtocolError):
        return ProbeOutcome(
            Reason.UNEXPECTED_RESPONSE,
            f"{host}:{port} did not answer in HTTP. Check spec.endpoint (scheme and port).",
        )
    if isinstance(leaf, httpx2.LocalProtocolError | httpx2.InvalidURL):
        return ProbeOutcome(
            Reason.INVALID_CONFIGURATION,
            f"The request could not be built ({type(leaf).__name__}). "
            "Check spec.endpoint, spec.headers and headersFromSecret.",
        )
    step = ctx.found.step
    during = f"{step} ({phase})" if step else str(phase)
    log.warning(
        "probe for provider %s raised %s during %s",
        ctx.provider.name,
        type(leaf).__name__,
        during,
    )
    return ProbeOutcome(
        Reason.UNEXPECTED_RESPONSE,
        f"The probe stopped on an unexpected error ({type(leaf).__name__}) during {during}.",
    )


def _os_problem(exc: BaseException) -> str:
    """'connection refused', from the innermost OSError that carries an errno."""
    for error in _chain(exc):
        if isinstance(error, OSError) and error.errno:
            return os.strerror(error.errno).lower()
    return "connection failed"


def _timed_out(phase: Phase, host: str, port: int, budget: str) -> ProbeOutcome:
    if phase is Phase.DNS:
        return ProbeOutcome(
            Reason.DNS_FAILURE, f"The lookup of {host} did not answer within {budget}."
        )
    if phase is Phase.CONNECT:
        return ProbeOutcome(
            Reason.CONNECTION_FAILED,
            f"Connecting to {host}:{port} did not complete within {budget}.",
        )
    if phase is Phase.TLS:
        return ProbeOutcome(
            Reason.TLS_ERROR, f"The TLS handshake with {host} did not complete within {budget}."
        )
    return ProbeOutcome(
        Reason.TIMEOUT,
        f"No complete answer from {host} within {budget} (spec.validation.timeout).",
    )


def _tls_failure(error: ssl.SSLError, host: str) -> ProbeOutcome:
    if isinstance(error, ssl.SSLCertVerificationError):
        problem = error.verify_message or error.reason or "verification failed"
        return ProbeOutcome(
            Reason.TLS_ERROR,
            f"The certificate of {host} was not accepted: {problem}. If the server uses a "
            "private CA, put its certificate in a Secret and set spec.tls.caBundleSecretRef.",
        )
    problem = error.reason or type(error).__name__
    hint = " Is the endpoint's scheme right?" if "WRONG_VERSION" in problem.upper() else ""
    return ProbeOutcome(Reason.TLS_ERROR, f"The TLS handshake with {host} failed: {problem}.{hint}")
