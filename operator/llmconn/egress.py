"""The operator's egress policy: which destinations a probe may connect to.

Rules are CIDRs (`10.0.0.0/8`), single addresses (`192.0.2.7`) or host patterns
(`api.example.com`, `*.internal`). Semantics, in order:

1. Unspecified addresses (0.0.0.0/8, ::) are always denied: Linux connects them to the local
   host, which would walk around a loopback deny.
2. Link-local and cloud metadata addresses (169.254.0.0/16, fe80::/10, fd00:ec2::254) are
   always denied, whatever the allow list says.
3. Deny rules win over allow rules: a destination matching any deny rule is refused.
4. When any allow rule is given, only destinations matching one of them are permitted.
   Loopback is permitted by default (the one-shot CLI and local servers live there); the
   chart adds a loopback deny, since in a pod loopback is the operator itself.

A host pattern matches the host name of the URL; a CIDR matches the address the name
resolved to. The caller resolves once, checks every address, and connects to the address it
checked (`llmconn.http`), so a name that re-resolves elsewhere cannot walk around the policy.
IPv4-mapped IPv6 addresses (::ffff:169.254.169.254) are checked as the IPv4 address they carry.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALWAYS_DENIED: tuple[tuple[IPNetwork, str], ...] = (
    (ipaddress.ip_network("0.0.0.0/8"), "unspecified addresses are always denied"),
    (ipaddress.ip_network("::/128"), "unspecified addresses are always denied"),
    (
        ipaddress.ip_network("169.254.0.0/16"),
        "link-local and cloud metadata addresses are always denied",
    ),
    (ipaddress.ip_network("fe80::/10"), "link-local addresses are always denied"),
    (ipaddress.ip_network("fd00:ec2::254/128"), "cloud metadata addresses are always denied"),
)

_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_PATTERN = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")
_RULE_HELP = (
    "expected a CIDR (10.0.0.0/8), an IP address (192.0.2.7) or a host pattern "
    "(api.example.com, *.internal)"
)


@dataclass(frozen=True)
class Rule:
    """One egress rule: a network, or a host pattern (exact name or `*.suffix`)."""

    text: str
    network: IPNetwork | None = None
    host: str | None = None  # lower case, no trailing dot; "*.x" matches names under x

    def matches(self, host: str | None, ip: IPAddress | None) -> bool:
        if self.network is not None:
            return ip is not None and ip.version == self.network.version and ip in self.network
        if self.host is None or host is None:
            return False
        name = _normal_host(host)
        if self.host.startswith("*."):
            return name.endswith(self.host[1:])
        return name == self.host

    @classmethod
    def parse(cls, text: str) -> Rule:
        raw = text.strip()
        if not raw:
            raise ValueError("empty egress rule")
        address, slash, prefix = raw.partition("/")
        address = address.removeprefix("[").removesuffix("]")
        if _looks_like_ip(address):
            candidate = f"{address}/{prefix}" if slash else address
            try:
                network = ipaddress.ip_network(candidate, strict=True)
            except ValueError as exc:
                hint = ""
                if "has host bits set" in str(exc):
                    loose = ipaddress.ip_network(candidate, strict=False)
                    hint = f" (did you mean {loose}?)"
                raise ValueError(f"invalid egress rule {raw!r}: {exc}{hint}") from None
            return cls(text=raw, network=network)
        host = _normal_host(raw)
        if not _HOST_PATTERN.fullmatch(host):
            raise ValueError(f"invalid egress rule {raw!r}: {_RULE_HELP}")
        return cls(text=raw, host=host)


@dataclass(frozen=True)
class EgressPolicy:
    """Deny rules (added to the built-in ones) and an optional allow list; deny wins."""

    deny: Sequence[Rule] = ()
    allow: Sequence[Rule] = ()

    @classmethod
    def from_strings(cls, deny: Iterable[str] = (), allow: Iterable[str] = ()) -> EgressPolicy:
        """Parse rule strings; each string may hold several rules separated by commas (so an
        environment variable can carry a list). ValueError names the bad rule."""
        return cls(deny=_parse_all(deny), allow=_parse_all(allow))

    def check(self, host: str | None, ip: str | IPAddress | None) -> str | None:
        """None when the destination is permitted, else why it is denied.

        `ip` is the address the host resolved to (None when it could not be resolved, which
        happens only behind a proxy: then host patterns decide, and an allow list that has
        no matching host pattern denies)."""
        address = _address(ip) if ip is not None else None
        if address is not None:
            for network, why in ALWAYS_DENIED:
                if address.version == network.version and address in network:
                    return f"{_shown(host, address)} is in {network}: {why}"
        for rule in self.deny:
            if rule.matches(host, address):
                return f"{_shown(host, address)} matches the egress deny rule {rule.text!r}"
        if self.allow and not any(rule.matches(host, address) for rule in self.allow):
            if address is None:
                return (
                    f"{host} could not be resolved by the operator to check it against "
                    "the egress allow list"
                )
            return f"{_shown(host, address)} matches no egress allow rule"
        return None

    def describe(self) -> str:
        """A one-line summary for startup logs."""
        deny = ", ".join(r.text for r in self.deny) or "none"
        allow = ", ".join(r.text for r in self.allow) or "any"
        return f"egress: link-local/metadata denied; deny {deny}; allow {allow}"


def _parse_all(texts: Iterable[str]) -> tuple[Rule, ...]:
    rules: list[Rule] = []
    for text in texts:
        rules.extend(Rule.parse(part) for part in text.split(",") if part.strip())
    return tuple(rules)


def _normal_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


def _looks_like_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return bool(re.fullmatch(r"[0-9.]+", text))  # "10.0.0" is a bad IP, not a host name
    return True


def _address(ip: str | IPAddress) -> IPAddress:
    address = ipaddress.ip_address(ip.split("%", 1)[0] if isinstance(ip, str) else ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _shown(host: str | None, address: IPAddress | None) -> str:
    if host and address is not None and _normal_host(host) != str(address):
        return f"{host} ({address})"
    return str(address) if address is not None else str(host)
