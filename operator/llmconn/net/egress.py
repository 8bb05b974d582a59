"""The operator's egress policy: which destinations a probe may connect to.

Rules are CIDRs (`10.0.0.0/8`), single addresses (`192.0.2.7`) or host patterns
(`api.example.com`, `*.internal`). Semantics, in order:

1. Unspecified addresses (0.0.0.0/8, ::) are always denied: Linux connects them to the local
   host, which would walk around a loopback deny.
2. Link-local and cloud metadata addresses are always denied, whatever the allow list says,
   because instance metadata hands out the node's cloud credentials (`ALWAYS_DENIED`):
   - 169.254.0.0/16 and fe80::/10 (link-local): 169.254.169.254, the metadata address of
     AWS, Google Cloud, Azure, Oracle, DigitalOcean, Hetzner, OpenStack and IBM Cloud, and
     others in the range (AWS ECS 169.254.170.2, EKS Pod Identity 169.254.170.23, Tencent
     169.254.0.23, Scaleway 169.254.42.42, OpenStack's fe80::a9fe:a9fe);
   - 100.100.100.200: Alibaba Cloud's metadata, inside the CGNAT range 100.64.0.0/10;
   - 192.0.0.192: Oracle Cloud's older (Classic) metadata address;
   - 168.63.129.16: Azure's WireServer, the host's platform endpoint (VM agent and extension
     configuration), a public address;
   - fd00:ec2::254 (AWS metadata), fd00:ec2::23 (EKS Pod Identity credentials), fd20:ce::254
     (Google Cloud metadata), fd00:42::42 (Scaleway metadata), inside the unique-local fc00::/7.
   These ranges are not otherwise denied by default (private networks are allowed: in-cluster
   model servers live there), so they are listed one by one.
3. Deny rules win over allow rules: a destination matching any deny rule is refused.
4. When any allow rule is given, only destinations matching one of them are permitted.
   Loopback is permitted by default (the one-shot CLI and local servers live there); the
   chart adds a loopback deny, since in a pod loopback is the operator itself.

A host pattern matches the host name of the URL; a CIDR matches the address the name
resolved to. The caller resolves once, checks every address, and connects to the address it
checked (`llmconn.net.guard`), so a name that re-resolves elsewhere cannot walk around the policy.

IPv6 addresses that carry an IPv4 address reach that IPv4 address wherever a translator or
tunnel exists (a dual-stack socket, NAT64 with DNS64, a 6to4 relay), so an IPv6 spelling
must not walk around an IPv4 deny. Before any check, `carried_ipv4` unwraps:

- IPv4-mapped `::ffff:a.b.c.d` (::ffff:0:0/96) and IPv4-translated `::ffff:0:a.b.c.d`
  (::ffff:0:0:0/96, SIIT): the last 32 bits;
- IPv4-compatible `::a.b.c.d` (::/96 except `::` and `::1`, which are themselves);
- NAT64 well-known prefix 64:ff9b::/96 (RFC 6052): the last 32 bits;
- NAT64 local-use prefix 64:ff9b:1::/48 (RFC 8215): the translator may use a /48, /56, /64 or
  /96 inside it, and the address does not say which, so the IPv4 cannot be extracted reliably.
  Every RFC 6052 reading (/48, /56, /64, /96) is taken as a candidate; 0.0.0.0/8 is not
  denied for these candidates (a translator does not deliver it to the local host, and a /96
  deployment reads as 0.0.x.x at /64, which would refuse every address);
- 6to4 2002::/16 (RFC 3056): bits 16-48;
- Teredo 2001::/32 (RFC 4380): the client (the last 32 bits XOR-ed), and the server.

A destination is denied when the address as given, or any IPv4 address it carries, is
always denied or matches a deny rule (loopback included: with the chart's `127.0.0.0/8` deny,
`::ffff:127.0.0.1`, `64:ff9b::7f00:1`, `2002:7f00:1::` and the other forms are refused too).
For allow rules, the IPv4 addresses carried decide, all of them: an allow rule that matches
only the IPv6 spelling (`64:ff9b::/96`, `::/0`) does not permit it, since the traffic goes to
the IPv4 address, and a local-use NAT64 address passes a CIDR allow list only when every
candidate is allowed (in practice, allow such endpoints by host pattern). So on an IPv6-only
cluster with DNS64, an IPv4 allow rule keeps working for the translated address.

Not unwrapped: NAT64 network-specific prefixes outside 64:ff9b::/96 and 64:ff9b:1::/48 (any
operator's prefix: they cannot be recognised; add your translator's prefix as a deny rule if
it can reach internal IPv4 networks) and ISATAP interface identifiers (tunnelled only from a
node with an ISATAP interface).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_UNSPECIFIED = "unspecified addresses are always denied"
_V4_UNSPECIFIED = ipaddress.ip_network("0.0.0.0/8")

# Whose each one is: the module docstring. The chart's NetworkPolicy excepts this very list
# (a chart test keeps them equal).
ALWAYS_DENIED: tuple[tuple[IPNetwork, str], ...] = (
    (_V4_UNSPECIFIED, _UNSPECIFIED),
    (ipaddress.ip_network("::/128"), _UNSPECIFIED),
    (
        ipaddress.ip_network("169.254.0.0/16"),
        "link-local and cloud metadata addresses are always denied",
    ),
    (ipaddress.ip_network("fe80::/10"), "link-local addresses are always denied"),
    (
        ipaddress.ip_network("100.100.100.200/32"),
        "Alibaba Cloud's metadata address is always denied",
    ),
    (
        ipaddress.ip_network("168.63.129.16/32"),
        "Azure's WireServer (host platform endpoint) is always denied",
    ),
    (
        ipaddress.ip_network("192.0.0.192/32"),
        "Oracle Cloud's classic metadata address is always denied",
    ),
    (ipaddress.ip_network("fd00:ec2::254/128"), "AWS's IPv6 metadata address is always denied"),
    (
        ipaddress.ip_network("fd00:ec2::23/128"),
        "AWS EKS Pod Identity's IPv6 credentials address is always denied",
    ),
    (
        ipaddress.ip_network("fd20:ce::254/128"),
        "Google Cloud's IPv6 metadata address is always denied",
    ),
    (ipaddress.ip_network("fd00:42::42/128"), "Scaleway's IPv6 metadata address is always denied"),
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
        carried = carried_ipv4(address) if address is not None else ()
        if address is not None:
            if (why := _always_denied(address, guessed=False)) is not None:
                return f"{_shown(host, address)} is in {why}"
            for inner in carried:
                if (why := _always_denied(inner.address, guessed=inner.guessed)) is not None:
                    return f"{_shown(host, address)} carries {inner}, which is in {why}"
        for rule in self.deny:
            if rule.matches(host, address):
                return f"{_shown(host, address)} matches the egress deny rule {rule.text!r}"
            for inner in carried:
                if rule.matches(None, inner.address):
                    return (
                        f"{_shown(host, address)} carries {inner}, which matches the egress "
                        f"deny rule {rule.text!r}"
                    )
        if self.allow and not any(rule.matches(host, None) for rule in self.allow):
            # No host pattern permits the name: the address must. When it carries IPv4
            # addresses, the traffic goes there, so those decide (all of them), not the
            # IPv6 spelling.
            if address is None:
                return (
                    f"{host} could not be resolved by the operator to check it against "
                    "the egress allow list"
                )
            for inner in carried:
                if not self._allows(inner.address):
                    return (
                        f"{_shown(host, address)} carries {inner}, which matches no egress "
                        "allow rule"
                    )
            if not carried and not self._allows(address):
                return f"{_shown(host, address)} matches no egress allow rule"
        return None

    def _allows(self, address: IPAddress) -> bool:
        return any(rule.matches(None, address) for rule in self.allow)

    def describe(self) -> str:
        """A one-line summary for startup logs."""
        deny = ", ".join(r.text for r in self.deny) or "none"
        allow = ", ".join(r.text for r in self.allow) or "any"
        return f"egress: link-local/metadata denied; deny {deny}; allow {allow}"


@dataclass(frozen=True)
class Carried:
    """An IPv4 address inside an IPv6 one, and the form that carries it."""

    address: ipaddress.IPv4Address
    form: str
    guessed: bool = False  # one reading of a NAT64 local-use address among several

    def __str__(self) -> str:
        return f"{self.address} ({self.form})"


_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")
_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_NAT64_LOCAL_LENGTHS = (48, 56, 64, 96)  # RFC 6052 prefix lengths that fit inside the /48


def carried_ipv4(address: IPAddress) -> tuple[Carried, ...]:
    """The IPv4 addresses an IPv6 address carries (see the module docstring), or ()."""
    if isinstance(address, ipaddress.IPv4Address):
        return ()
    low = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _MAPPED:
        return (Carried(low, "IPv4-mapped"),)
    if address in _TRANSLATED:
        return (Carried(low, "IPv4-translated"),)
    if address in _COMPATIBLE:
        return () if int(address) <= 1 else (Carried(low, "IPv4-compatible"),)
    if address in _NAT64:
        return (Carried(low, "NAT64"),)
    if address in _NAT64_LOCAL:
        readings: dict[ipaddress.IPv4Address, int] = {}
        for length in reversed(_NAT64_LOCAL_LENGTHS):  # /96 first, the usual deployment
            readings.setdefault(_rfc6052(address, length), length)
        return tuple(
            Carried(ipv4, f"NAT64 local-use, read as /{length}", guessed=True)
            for ipv4, length in readings.items()
        )
    if (ipv4 := address.sixtofour) is not None:
        return (Carried(ipv4, "6to4"),)
    if address.teredo is not None:
        server, client = address.teredo
        return (Carried(client, "Teredo client"), Carried(server, "Teredo server"))
    return ()


def _rfc6052(address: ipaddress.IPv6Address, length: int) -> ipaddress.IPv4Address:
    """The IPv4 address embedded after a prefix of `length` bits (RFC 6052 section 2.2): the
    32 bits that follow the prefix, skipping bits 64-71 (the "u" octet) below a /96."""
    packed = address.packed
    if length == 96:
        return ipaddress.IPv4Address(packed[12:])
    start = length // 8
    return ipaddress.IPv4Address((packed[:8] + packed[9:])[start : start + 4])


def _always_denied(address: IPAddress, *, guessed: bool) -> str | None:
    for network, why in ALWAYS_DENIED:
        if guessed and network == _V4_UNSPECIFIED:
            continue  # see the module docstring: not the local host behind a translator
        if address.version == network.version and address in network:
            return f"{network}: {why}"
    return None


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
    return ipaddress.ip_address(ip.split("%", 1)[0] if isinstance(ip, str) else ip)


def _shown(host: str | None, address: IPAddress | None) -> str:
    if host and address is not None and _normal_host(host) != str(address):
        return f"{host} ({address})"
    return str(address) if address is not None else str(host)
