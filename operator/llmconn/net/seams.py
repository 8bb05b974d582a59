"""The only places where llmconn reaches into a library past its public API, because no public
seam exists; tests/unit/test_seams.py fails when the library changes what these rely on.

- httpx2's `AsyncHTTPTransport` takes no network backend: the egress guard needs its own
  (`guard.GuardedBackend`), so the transport's connection pool (`_pool`) is replaced by one
  built as httpx builds it, with that backend.
- httpx2's reading of HTTP_PROXY / HTTPS_PROXY / ALL_PROXY / NO_PROXY into mount patterns
  (`httpx2._utils.get_environment_proxies`): the same semantics as every httpx client, rather
  than a second reading that could disagree with it.
"""

from __future__ import annotations

import httpcore2
import httpx2
from httpx2._utils import get_environment_proxies


def replace_pool(transport: httpx2.AsyncHTTPTransport, pool: httpcore2.AsyncConnectionPool) -> None:
    """Make `transport` send through `pool` instead of the pool it built."""
    if not isinstance(getattr(transport, "_pool", None), httpcore2.AsyncConnectionPool):
        raise RuntimeError("httpx2's AsyncHTTPTransport no longer keeps its pool in _pool")
    transport._pool = pool


def environment_proxies() -> dict[str, str | None]:
    """Proxy mounts from the environment, as httpx reads them."""
    return get_environment_proxies()
