"""Tests reach loopback only: every probe client a test builds (`ClientPool`) is given a
resolver, `netkit.loopback_only` or one the test fakes, so no test asks the machine's
resolver for a name and dials what it answers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from llmconn.net.guard import DNSLookupError
from netkit import loopback_only

TESTS = Path(__file__).resolve().parents[1]


def pools_without_a_resolver(source: str) -> list[int]:
    """Lines where `ClientPool(...)` is called without a `resolver=`."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "ClientPool"
            and not any(k.arg == "resolver" for k in node.keywords)
        ):
            lines.append(node.lineno)
    return lines


def test_the_check_finds_a_pool_without_a_resolver() -> None:
    source = "a = ClientPool(EgressPolicy(), proxies={})\nb = ClientPool(p, resolver=r)\n"
    assert pools_without_a_resolver(source) == [1]


def test_every_pool_in_the_tests_has_a_resolver() -> None:
    found = {
        f"{path.relative_to(TESTS)}:{line}"
        for path in TESTS.rglob("*.py")
        for line in pools_without_a_resolver(path.read_text())
    }
    assert not found, "ClientPool without resolver= (use netkit.loopback_only): " + str(found)


async def test_loopback_only_knows_localhost_and_no_other_name() -> None:
    assert await loopback_only("localhost", 443) == ["127.0.0.1"]
    with pytest.raises(DNSLookupError):
        await loopback_only("api.openai.com", 443)
