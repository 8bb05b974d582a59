"""The private parts of libraries that llmconn relies on, all in `llmconn.net.seams`: these
tests fail when a new release of the library changes them, before a probe would."""

from __future__ import annotations

import httpcore2
import httpx2
import pytest

from llmconn.net import seams


def test_httpx_transports_keep_their_pool_where_the_guard_replaces_it() -> None:
    transport = httpx2.AsyncHTTPTransport()
    pool = httpcore2.AsyncConnectionPool()
    seams.replace_pool(transport, pool)
    assert transport._pool is pool


def test_a_transport_without_that_pool_is_refused_not_patched() -> None:
    class Other(httpx2.AsyncBaseTransport):
        pass

    with pytest.raises(RuntimeError, match="_pool"):
        seams.replace_pool(Other(), httpcore2.AsyncConnectionPool())  # type: ignore[arg-type]


def test_proxies_are_read_from_the_environment_as_httpx_reads_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example,10.0.0.0/8")
    mounts = seams.environment_proxies()
    assert mounts["https://"] == "http://127.0.0.1:3128"
    assert mounts["all://*internal.example"] is None
    assert mounts["all://10.0.0.0/8"] is None
