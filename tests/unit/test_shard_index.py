"""Shards without a cluster: which slice a replica owns, from --shard-index or from its pod's
name as a StatefulSet gives it, and one peering object per shard. (Three shards on a real
control plane: tests/e2e/test_sharding.py.)"""

from __future__ import annotations

import uuid

import pytest

from llmconn.controller.config import from_args
from llmconn.controller.peering import Shard


def test_a_number_is_the_shard() -> None:
    config = from_args(["-A", "--shard-count", "3", "--shard-index", "2", "--peering", "p"])
    assert config.shard == Shard(2, 3)
    assert config.peering_name == "p-shard-2"


@pytest.mark.parametrize(
    ("pod", "count", "index"),
    [
        ("llmconn-0", 3, 0),
        ("llmconn-2", 3, 2),
        ("llmconn-3", 3, 0),  # a second pod of shard 0: its standby
        ("llmconn-7", 3, 1),
        ("my-release-llmconn-12", 5, 2),
    ],
)
def test_pod_ordinal_is_the_shard_modulo_the_count(
    monkeypatch: pytest.MonkeyPatch, pod: str, count: int, index: int
) -> None:
    monkeypatch.setenv("POD_ID", pod)
    config = from_args(
        ["-A", "--shard-count", str(count), "--shard-index", "pod-ordinal", "--peering", "p"]
    )
    assert config.shard == Shard(index, count)
    assert config.peering_name == f"p-shard-{index}"


def test_the_environment_can_say_pod_ordinal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_ID", "llmconn-4")
    monkeypatch.setenv("LLMCONN_SHARD_INDEX", "pod-ordinal")
    monkeypatch.setenv("LLMCONN_SHARD_COUNT", "3")
    assert from_args(["-A"]).shard == Shard(1, 3)


@pytest.mark.parametrize("pod", [None, "", "host/123/abc", "llmconn", "llmconn-x", "llmconn-٣"])
def test_pod_ordinal_without_a_statefulset_pod_name_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], pod: str | None
) -> None:
    """A replica that cannot tell its shard must not start as shard 0 (it would validate
    another shard's connections a second time)."""
    if pod is None:
        monkeypatch.delenv("POD_ID", raising=False)
    else:
        monkeypatch.setenv("POD_ID", pod)
    with pytest.raises(SystemExit):
        from_args(["-A", "--shard-count", "3", "--shard-index", "pod-ordinal"])
    assert "POD_ID" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--shard-count", "3", "--shard-index", "3"],
        ["--shard-count", "3", "--shard-index", "-1"],
        ["--shard-count", "0"],
        ["--shard-count", "2", "--shard-index", "first"],
    ],
)
def test_impossible_shards_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        from_args(["-A", *argv])


def test_without_shards_the_peering_name_is_the_given_one() -> None:
    assert from_args(["-A", "--peering", "p"]).peering_name == "p"


def test_the_shards_split_every_connection_exactly_once() -> None:
    uids = [str(uuid.UUID(int=i * 7919 + 1)) for i in range(3000)]
    shards = [Shard(i, 3) for i in range(3)]
    owners = [[s.index for s in shards if s.owns(uid)] for uid in uids]
    assert all(len(o) == 1 for o in owners)
    sizes = [sum(1 for o in owners if o == [i]) for i in range(3)]
    assert min(sizes) > 800  # a stable hash spreads them about evenly
