"""spec.identity in the spec model: the cases the CRD is tested with on a real API server
(tests/identity_cases.py) get the same answer here, and the CRD's patterns are the model's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

import identity_cases
from llmconn.model import blocks as blocks_mod
from llmconn.model import fields as fields_mod
from llmconn.model.blocks import CLOUDS
from llmconn.probes import parse_spec

CRD = Path(__file__).resolve().parents[2] / "crds" / "llmconnections.yaml"


def crd_identity() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    node: dict[str, Any] = root["properties"]["spec"]["properties"]["identity"]
    return node


@pytest.mark.parametrize(
    ("spec", "expected"),
    [c[1:] for c in identity_cases.INVALID],
    ids=[c[0] for c in identity_cases.INVALID],
)
def test_the_model_refuses_what_the_crd_refuses(spec: dict[str, Any], expected: list[str]) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_spec(spec)
    text = str(caught.value)
    for part in expected:
        assert part in text


@pytest.mark.parametrize(
    "spec", [c[1] for c in identity_cases.VALID], ids=[c[0] for c in identity_cases.VALID]
)
def test_the_model_accepts_what_the_crd_accepts(spec: dict[str, Any]) -> None:
    parsed = parse_spec(spec)
    assert parsed.identity is not None
    assert identity_cases.BY_CLOUD[parsed.identity.cloud]["provider"] == parsed.provider
    assert parsed.identity.service_account_name == "agent"
    assert parsed.api_key_secret_ref is None


@pytest.mark.parametrize(("block", "value", "accepted"), identity_cases.CLOUD_BLOCKS)
def test_cloud_blocks_fields(block: str, value: dict[str, Any], accepted: bool) -> None:
    model = CLOUDS[block]
    if accepted:
        model.model_validate(value)
        parse_spec(identity_cases.with_cloud(block, value))
    else:
        with pytest.raises(ValidationError):
            model.model_validate(value)
        with pytest.raises(ValidationError, match=f"identity.{block}|{block}"):
            parse_spec(identity_cases.with_cloud(block, value))


def test_crd_patterns_are_the_models() -> None:
    identity = crd_identity()
    props = {cloud: identity["properties"][cloud]["properties"] for cloud in CLOUDS}
    assert set(identity["properties"]) == {"serviceAccountName", *CLOUDS}
    assert identity["properties"]["serviceAccountName"]["pattern"] == fields_mod.SECRET_NAME_PATTERN
    assert props["aws"]["roleArn"]["pattern"] == blocks_mod.ROLE_ARN_PATTERN
    assert props["aws"]["stsRegion"]["pattern"] == fields_mod.AWS_REGION_PATTERN
    assert props["azure"]["tenantId"]["pattern"] == blocks_mod.TENANT_PATTERN
    assert props["azure"]["clientId"]["pattern"] == blocks_mod.GUID_PATTERN
    assert props["gcp"]["audience"]["pattern"] == blocks_mod.GCP_AUDIENCE_PATTERN
    assert props["gcp"]["serviceAccountEmail"]["pattern"] == blocks_mod.GCP_SERVICE_ACCOUNT_PATTERN
    # Each cloud block's fields are the model's, by alias.
    for cloud, model in CLOUDS.items():
        aliases = {f.alias or n for n, f in model.model_fields.items()}
        assert set(props[cloud]) == aliases, cloud


def test_the_cloud_is_the_block_given() -> None:
    parsed = parse_spec(identity_cases.AZURE)
    assert parsed.identity is not None and parsed.identity.azure is not None
    assert parsed.identity.azure.tenant_id == identity_cases.TENANT
    assert parsed.secret_refs == []  # no Secret is read for an identity
