"""The CRD's CEL rules that name providers agree with the probe registry (the only list).

The provider enum is checked in test_docs_consistency.py; here: which providers require an
endpoint, which provider-specific blocks each accepts or requires, and which header each
provider's key goes in. A provider added or changed in its module fails here until the CRD
says the same.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from llmconn.model.blocks import BLOCKS, CLOUDS
from llmconn.probes import registry
from llmconn.probes.base import Auth

CRD = Path(__file__).resolve().parents[2] / "crds" / "llmconnections.yaml"


def spec_rules() -> list[str]:
    crd = yaml.safe_load(CRD.read_text())
    spec: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = spec["properties"]["spec"]
    return [" ".join(rule["rule"].split()) for rule in spec["x-kubernetes-validations"]]


def test_the_providers_that_require_an_endpoint_are_the_registrys() -> None:
    rule = next(r for r in spec_rules() if r.startswith("has(self.endpoint)"))
    listed = set(re.findall(r"'([a-z0-9-]+)'", rule))
    required = {name for name in registry.names() if registry.get(name).default_endpoint is None}
    assert listed == required


def test_the_provider_blocks_rules_are_the_registrys() -> None:
    expected = set()
    for block in BLOCKS:
        allowed = [name for name in registry.names() if block in registry.get(name).blocks]
        assert allowed, f"no provider accepts spec.{block}"
        if len(allowed) == 1:
            expected.add(f"!has(self.{block}) || self.provider == '{allowed[0]}'")
        else:
            listed = ", ".join(f"'{name}'" for name in allowed)
            expected.add(f"!has(self.{block}) || self.provider in [{listed}]")
        for name in allowed:
            if block in registry.get(name).required_blocks:
                expected.add(f"self.provider != '{name}' || has(self.{block})")
    about_blocks = {r for r in spec_rules() if any(f"has(self.{b})" in r for b in BLOCKS)}
    assert about_blocks == expected


def test_the_aws_credentials_rule_names_the_providers_that_sign() -> None:
    signing = [name for name in registry.names() if registry.get(name).aws_sigv4]
    assert signing, "no provider signs with AWS credentials"
    listed = ", ".join(f"'{name}'" for name in signing)
    allowed = (
        f"self.provider in [{listed}]" if len(signing) > 1 else f"self.provider == '{signing[0]}'"
    )
    rules = [
        r for r in spec_rules() if r.startswith("!has(self.awsCredentialsSecretRef) || self.p")
    ]
    assert rules == [f"!has(self.awsCredentialsSecretRef) || {allowed}"]


def test_the_auth_header_expression_is_the_registrys() -> None:
    expected = "".join(
        f"self.provider == '{name}' ? '{registry.get(name).auth.header}' : "
        for name in registry.names()
        if registry.get(name).auth is not Auth.BEARER
    )
    expected = f"({expected}'{Auth.BEARER.header}')"
    rule = next(r for r in spec_rules() if "self.provider == " in r and "h.name" in r)
    assert expected in rule.replace("( ", "(").replace(" )", ")")


def test_the_identity_rules_are_the_registrys() -> None:
    """Which provider takes which spec.identity cloud: one rule per cloud, from the
    providers' `identities` declarations (a cloud no provider takes is refused outright)."""
    expected = set()
    for cloud in CLOUDS:
        allowed = [name for name in registry.names() if cloud in registry.get(name).identities]
        base = f"!has(self.identity) || !has(self.identity.{cloud})"
        if not allowed:
            expected.add(base)
        elif len(allowed) == 1:
            expected.add(f"{base} || self.provider == '{allowed[0]}'")
        else:
            listed = ", ".join(f"'{name}'" for name in allowed)
            expected.add(f"{base} || self.provider in [{listed}]")
    about = {r for r in spec_rules() if any(f"has(self.identity.{c})" in r for c in CLOUDS)}
    assert about == expected


def test_the_oauth_rule_names_the_providers_that_take_a_token() -> None:
    """spec.oauth is admitted for the providers that declare `oauth`, and no other."""
    taking = [name for name in registry.names() if registry.get(name).oauth]
    assert taking, "no provider takes an OAuth access token"
    listed = ", ".join(f"'{name}'" for name in taking)
    allowed = (
        f"self.provider in [{listed}]" if len(taking) > 1 else f"self.provider == '{taking[0]}'"
    )
    rules = [r for r in spec_rules() if r.startswith("!has(self.oauth) || self.provider")]
    assert rules == [f"!has(self.oauth) || {allowed}"]
