"""What AWS's JSON APIs share, for probes that speak them: SigV4 signing and the error shape.

Signing is botocore's `SigV4Auth`, AWS's own implementation, imported on first use: only a
probe that signs pays its import (about 3.6 MiB and 50-110 ms, once per process; see
docs/design.md), and the import runs in a thread so that no other probe waits for it.
botocore signs and nothing else: requests go out through the probe's own transport, held to
the egress policy, and botocore's HTTP stack and credential chain are never used.

What is signed: the method, the URL as it is sent, the body's SHA-256, and the headers
`host`, `content-type`, `x-amz-date`, `x-amz-security-token` and any `x-amz-*` of the spec's.
Headers the client adds or a protocol may drop on the way (`connection`, `accept-encoding`,
`user-agent`; HTTP/2 removes connection headers) are left unsigned, as AWS allows: it checks
only the headers the signature names.

Errors (botocore `parsers.py`, `RestJSONParser._inject_error_code` and
`BaseJSONParser._do_error_parse`): the code is the `x-amzn-ErrorType` header, else the body's
`code`/`Code`, else its `__type`, cut at ':' and after '#'; the message is the body's
`message` or `Message`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx2

from llmconn.model.credentials import AwsCredentials
from llmconn.net.exchange import Reply, Signer

_SIGNED = frozenset({"host", "content-type"})
_ADDED = ("Authorization", "X-Amz-Date", "X-Amz-Security-Token")

_factory: Callable[[AwsCredentials, str, str], Signer] | None = None


async def signer(credentials: AwsCredentials, region: str, service: str) -> Signer:
    """A signer for one probe's requests to `service` in `region`. (Two first probes may both
    load botocore: Python's import lock makes that one import.)"""
    global _factory
    if _factory is None:
        _factory = await asyncio.to_thread(_load)
    return _factory(credentials, region, service)


def _load() -> Callable[[AwsCredentials, str, str], Signer]:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    def make(credentials: AwsCredentials, region: str, service: str) -> Signer:
        auth = SigV4Auth(
            Credentials(
                credentials.access_key_id,
                credentials.secret_access_key,
                credentials.session_token,
            ),
            service,
            region,
        )

        def sign(request: httpx2.Request) -> None:
            headers = {
                name: value
                for name, value in request.headers.items()
                if name.lower() in _SIGNED or name.lower().startswith("x-amz-")
            }
            signed = AWSRequest(
                method=request.method, url=str(request.url), data=request.content, headers=headers
            )
            auth.add_auth(signed)
            for name in _ADDED:
                if name in signed.headers:
                    request.headers[name] = signed.headers[name]

        return sign

    return make


@dataclass(frozen=True)
class AwsError:
    code: str  # AccessDeniedException, ValidationException, ... ("" when none was given)
    message: str


def aws_error(reply: Reply) -> AwsError | None:
    """The error an AWS JSON API answered with, read as botocore reads it; None when the answer
    names no AWS error (no x-amzn-ErrorType, and no JSON object with a code or message)."""
    body: Any = reply.json()
    body = body if isinstance(body, dict) else {}
    code = reply.headers.get("x-amzn-errortype")
    if code is None:
        found = body.get("code", body.get("Code", body.get("__type")))
        code = found if isinstance(found, str) else None
    message = body.get("message", body.get("Message"))
    if code is None and not isinstance(message, str):
        return None
    code = (code or "").split(":", 1)[0].rsplit("#", 1)[-1]
    return AwsError(code=code, message=message if isinstance(message, str) else "")
