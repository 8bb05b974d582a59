"""The egress policy, and the HTTP client pool that enforces it on the address it dials."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpcore2
import httpx2
import pytest

from llmconn.net import guard as guard_mod
from llmconn.net import pool as pool_mod
from llmconn.net.egress import EgressPolicy, Rule, carried_ipv4
from llmconn.net.guard import DNSLookupError, EgressDenied, system_resolver
from llmconn.net.pool import ClientPool, TLSOptions
from netkit import loopback_only
from servers.h2_server import H2Server
from servers.misbehaving import RawServer, answer, make_tls

# --- the policy ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ip",
    [
        "169.254.169.254",
        "169.254.0.1",
        "fe80::1",
        "fd00:ec2::254",
        "::ffff:169.254.169.254",  # IPv4-mapped: checked as the IPv4 address it carries
        "0.0.0.0",  # Linux dials it as the local host
        "::",
    ],
)
def test_link_local_metadata_and_unspecified_are_denied_by_default(ip: str) -> None:
    why = EgressPolicy().check("example.com", ip)
    assert why is not None
    assert "always denied" in why


@pytest.mark.parametrize(
    ("ip", "owner"),
    [
        ("100.100.100.200", "Alibaba Cloud"),
        ("168.63.129.16", "Azure"),
        ("192.0.0.192", "Oracle Cloud"),
        ("fd00:ec2::254", "AWS"),
        ("fd00:ec2::23", "EKS Pod Identity"),
        ("fd20:ce::254", "Google Cloud"),
        ("fd00:42::42", "Scaleway"),
    ],
)
def test_metadata_addresses_outside_link_local_are_denied_by_name(ip: str, owner: str) -> None:
    why = EgressPolicy.from_strings(allow=["0.0.0.0/0", "::/0"]).check("x", ip)
    assert why is not None
    assert owner in why
    assert "always denied" in why
    # ... and only those addresses: their neighbours are ordinary destinations.
    neighbour = str(ipaddress.ip_address(ip) + 1)
    assert EgressPolicy().check("x", neighbour) is None


# Every IPv6 spelling of an IPv4 address the operator unwraps, for 169.254.169.254 (a9fe:a9fe),
# 100.100.100.200 (6464:64c8) and 127.0.0.1 (7f00:1).
IPV6_FORMS = {
    "169.254.169.254": [
        ("::ffff:169.254.169.254", "IPv4-mapped"),
        ("::ffff:0:a9fe:a9fe", "IPv4-translated"),
        ("::169.254.169.254", "IPv4-compatible"),
        ("64:ff9b::a9fe:a9fe", "NAT64"),
        ("64:ff9b:1::a9fe:a9fe", "NAT64 local-use, read as /96"),
        ("64:ff9b:1:a9:fe:a9fe::", "NAT64 local-use, read as /56"),
        ("2002:a9fe:a9fe::1", "6to4"),
        ("2001:0:4136:e378:8000:63bf:5601:5601", "Teredo client"),  # 5601:5601 XOR ffff:ffff
    ],
    "100.100.100.200": [
        ("::ffff:100.100.100.200", "IPv4-mapped"),
        ("::ffff:0:6464:64c8", "IPv4-translated"),
        ("::6464:64c8", "IPv4-compatible"),
        ("64:ff9b::6464:64c8", "NAT64"),
        ("64:ff9b:1::6464:64c8", "NAT64 local-use, read as /96"),
        ("2002:6464:64c8::", "6to4"),
        ("2001:0:4136:e378:8000:63bf:9b9b:9b37", "Teredo client"),
    ],
    "127.0.0.1": [
        ("::ffff:127.0.0.1", "IPv4-mapped"),
        ("::ffff:0:127.0.0.1", "IPv4-translated"),
        ("::127.0.0.1", "IPv4-compatible"),
        ("64:ff9b::7f00:1", "NAT64"),
        ("64:ff9b:1::7f00:1", "NAT64 local-use, read as /96"),
        ("64:ff9b:1:7f00:0:100::", "NAT64 local-use, read as /48"),
        ("64:ff9b:1:0:7f:0:100:0", "NAT64 local-use, read as /64"),
        ("2002:7f00:1::", "6to4"),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "Teredo client"),
    ],
}
CHART_LOOPBACK_DENY = ["127.0.0.0/8", "::1/128"]  # what the chart passes by default


def forms(ipv4: str) -> list[Any]:
    return [pytest.param(ip, form, id=f"{form}:{ip}") for ip, form in IPV6_FORMS[ipv4]]


@pytest.mark.parametrize("ipv4", sorted(IPV6_FORMS))
def test_the_forms_carry_the_address_they_are_listed_for(ipv4: str) -> None:
    for ip, form in IPV6_FORMS[ipv4]:
        carried = {(str(c.address), c.form) for c in carried_ipv4(ipaddress.ip_address(ip))}
        assert (ipv4, form) in carried, ip


@pytest.mark.parametrize(("ip", "form"), forms("169.254.169.254") + forms("100.100.100.200"))
def test_ipv6_forms_of_a_metadata_address_are_always_denied(ip: str, form: str) -> None:
    policy = EgressPolicy.from_strings(allow=["0.0.0.0/0", "::/0", "64:ff9b::/96", "2002::/16"])
    why = policy.check("meta.test", ip)
    assert why is not None
    assert f"({form})" in why
    assert "always denied" in why


@pytest.mark.parametrize(("ip", "form"), forms("127.0.0.1"))
def test_ipv6_forms_of_loopback_are_denied_whenever_loopback_is(ip: str, form: str) -> None:
    why = EgressPolicy.from_strings(deny=CHART_LOOPBACK_DENY).check("lo.test", ip)
    assert why == f"lo.test ({ipaddress.ip_address(ip)}) carries 127.0.0.1 ({form}), which " + (
        "matches the egress deny rule '127.0.0.0/8'"
    )
    assert EgressPolicy().check("lo.test", ip) is None  # loopback is allowed by default


@pytest.mark.parametrize(
    "ip",
    [
        "::ffff:127.1.2.3",
        "64:ff9b::127.255.255.254",
        "::ffff:0:127.9.9.9",
        "2002:7f12:3456::",
    ],
)
def test_the_whole_loopback_network_is_unwrapped_not_only_127_0_0_1(ip: str) -> None:
    assert EgressPolicy.from_strings(deny=CHART_LOOPBACK_DENY).check("lo", ip) is not None


def test_deny_rules_match_the_carried_address_and_the_address_as_given() -> None:
    policy = EgressPolicy.from_strings(deny=["10.0.0.0/8", "2002:c000:200::/40"])
    assert policy.check("db", "64:ff9b::10.1.2.3") is not None  # the IPv4 carried
    assert policy.check("db", "2002:c000:201::1") is not None  # the address as given
    assert policy.check("db", "2002:c000:301::1") is None  # 192.0.3.1, in neither
    assert policy.check("db", "64:ff9b::11.1.2.3") is None


@pytest.mark.parametrize(
    "ip",
    [
        "64:ff9b::a29f:8cf5",  # 162.159.140.245 through DNS64/NAT64
        "64:ff9b:1::a29f:8cf5",  # ... through a local-use /96 (its other readings are 0.0.x.x)
        "2002:a29f:8cf5::1",
        "2001:0:4136:e378:8000:63bf:5d60:730a",  # Teredo client 162.159.140.245
        "2606:4700::6810:84e5",  # a plain IPv6 address carries nothing
    ],
)
def test_ipv6_forms_of_public_addresses_stay_allowed(ip: str) -> None:
    assert EgressPolicy.from_strings(deny=CHART_LOOPBACK_DENY).check("api", ip) is None


def test_ipv4_compatible_leaves_unspecified_and_loopback_alone() -> None:
    assert carried_ipv4(ipaddress.ip_address("::")) == ()
    assert carried_ipv4(ipaddress.ip_address("::1")) == ()
    assert EgressPolicy().check("localhost", "::1") is None
    assert EgressPolicy.from_strings(deny=CHART_LOOPBACK_DENY).check("localhost", "::1") == (
        "localhost (::1) matches the egress deny rule '::1/128'"
    )


def test_ipv4_mapped_unspecified_is_denied_as_the_local_host() -> None:
    why = EgressPolicy().check("x", "::ffff:0.0.0.0")
    assert why is not None
    assert "unspecified" in why


def test_for_allow_rules_the_carried_ipv4_decides_not_the_ipv6_spelling() -> None:
    by_ipv4 = EgressPolicy.from_strings(allow=["162.159.0.0/16"])
    assert by_ipv4.check("api", "64:ff9b::a29f:8cf5") is None  # DNS64 keeps an IPv4 allow list
    assert by_ipv4.check("api", "2002:a29f:8cf5::1") is None
    by_ipv6 = EgressPolicy.from_strings(allow=["64:ff9b::/96", "::/0"])
    assert by_ipv6.check("api", "64:ff9b::a29f:8cf5") == (
        "api (64:ff9b::a29f:8cf5) carries 162.159.140.245 (NAT64), which matches no egress "
        "allow rule"
    )
    assert by_ipv6.check("api", "2606:4700::6810:84e5") is None
    by_name = EgressPolicy.from_strings(allow=["api.example"])
    assert by_name.check("api.example", "64:ff9b::a29f:8cf5") is None


def test_a_local_use_nat64_address_passes_an_allow_list_only_when_every_reading_does() -> None:
    policy = EgressPolicy.from_strings(allow=["162.159.0.0/16"])
    why = policy.check("api", "64:ff9b:1::a29f:8cf5")
    assert why is not None
    assert "0.0.0.162 (NAT64 local-use, read as /64)" in why
    assert EgressPolicy.from_strings(allow=["api"]).check("api", "64:ff9b:1::a29f:8cf5") is None


def test_teredo_carries_the_client_and_the_server() -> None:
    carried = carried_ipv4(ipaddress.ip_address("2001:0:4136:e378:8000:63bf:3fff:fdd2"))
    assert [(str(c.address), c.form) for c in carried] == [
        ("192.0.2.45", "Teredo client"),
        ("65.54.227.120", "Teredo server"),
    ]


@pytest.mark.parametrize("ip", ["127.0.0.1", "::1", "10.1.2.3", "192.168.0.10", "93.184.216.34"])
def test_loopback_private_and_public_are_allowed_by_default(ip: str) -> None:
    assert EgressPolicy().check("example.com", ip) is None


def test_an_allow_list_cannot_open_the_metadata_address() -> None:
    policy = EgressPolicy.from_strings(allow=["169.254.0.0/16", "0.0.0.0/0"])
    assert policy.check("x", "169.254.169.254") is not None
    assert policy.check("x", "10.0.0.1") is None


def test_deny_rules_add_to_the_built_in_ones() -> None:
    policy = EgressPolicy.from_strings(deny=["127.0.0.0/8,::1/128", "10.0.0.0/8"])
    assert policy.check("localhost", "127.0.0.1") == (
        "localhost (127.0.0.1) matches the egress deny rule '127.0.0.0/8'"
    )
    assert policy.check("localhost", "::1") is not None
    assert policy.check("db", "10.9.9.9") is not None
    assert policy.check("api", "192.168.1.1") is None
    assert policy.check("meta", "169.254.169.254") is not None


def test_deny_wins_over_allow() -> None:
    policy = EgressPolicy.from_strings(deny=["10.0.0.5"], allow=["10.0.0.0/8"])
    assert policy.check("a", "10.0.0.5") is not None
    assert policy.check("a", "10.0.0.6") is None


def test_an_allow_list_restricts_everything_else_loopback_included() -> None:
    policy = EgressPolicy.from_strings(allow=["10.0.0.0/8", "*.corp.example"])
    assert policy.check("gw", "10.2.3.4") is None
    assert policy.check("api.corp.example", "203.0.113.9") is None  # the host pattern allows
    assert (
        policy.check("localhost", "127.0.0.1")
        == "localhost (127.0.0.1) matches no egress allow rule"
    )
    assert policy.check("api.openai.com", "203.0.113.9") is not None


def test_host_patterns_match_names_not_addresses() -> None:
    policy = EgressPolicy.from_strings(
        deny=["*.internal", "metadata.google.internal.", "Evil.Example"]
    )
    assert policy.check("metadata.google.internal", "203.0.113.1") is not None
    assert policy.check("db.svc.internal", "203.0.113.1") is not None
    assert policy.check("internal", "203.0.113.1") is None  # "*." needs a label before it
    assert policy.check("notinternal", "203.0.113.1") is None
    assert policy.check("EVIL.example.", "203.0.113.1") is not None  # case and the root dot
    assert policy.check("203.0.113.1", "203.0.113.1") is None


def test_an_unresolved_host_is_judged_by_host_patterns_only() -> None:
    assert EgressPolicy().check("only-the-proxy-knows", None) is None
    assert EgressPolicy.from_strings(deny=["*.internal"]).check("a.internal", None) is not None
    cidr_only = EgressPolicy.from_strings(allow=["10.0.0.0/8"])
    assert "could not be resolved" in (cidr_only.check("only-the-proxy-knows", None) or "")
    assert EgressPolicy.from_strings(allow=["*.example"]).check("api.example", None) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("192.0.2.7", "192.0.2.7/32"),
        ("[::1]", "::1/128"),
        ("[fd00::]/8", "fd00::/8"),
        ("fd00::/8", "fd00::/8"),
    ],
)
def test_rules_parse_networks(text: str, expected: str) -> None:
    assert str(Rule.parse(text).network) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.1/8", "did you mean 10.0.0.0/8"),
        ("10.0.0", "invalid egress rule '10.0.0'"),
        ("300.1.1.1", "invalid egress rule"),
        ("*", "host pattern"),
        ("a..b", "host pattern"),
        ("http://x", "host pattern"),
        ("*.*.x", "host pattern"),
    ],
)
def test_bad_rules_are_refused_naming_the_rule(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("*", r"\*")):
        EgressPolicy.from_strings(deny=["127.0.0.0/8", text])


def test_empty_strings_and_spaces_are_ignored() -> None:
    policy = EgressPolicy.from_strings(deny=["", " 10.0.0.0/8 , "], allow=[])
    assert [r.text for r in policy.deny] == ["10.0.0.0/8"]
    assert "10.0.0.0/8" in policy.describe()


# --- the guarded backend ---------------------------------------------------------------


class Recorder:
    phase = "start"

    def __init__(self) -> None:
        self.phase_ms: dict[str, float] = {}
        self.phases: list[str] = []

    def __setattr__(self, name: str, value: object) -> None:
        if name == "phase":
            self.phases.append(str(value))
        super().__setattr__(name, value)


def mapping_resolver(table: dict[str, Sequence[str]], calls: list[str] | None = None):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> Sequence[str]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise DNSLookupError(host, "Name or service not known")
        return table[host]

    return resolve


@pytest.fixture
def dialled(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The hosts the real socket backend was asked to connect to."""
    targets: list[str] = []

    class RecordingBackend(httpcore2.AnyIOBackend):
        async def connect_tcp(self, host: str, port: int, *args, **kwargs):  # type: ignore[no-untyped-def]
            targets.append(host)
            return await super().connect_tcp(host, port, *args, **kwargs)

    monkeypatch.setattr(httpcore2, "AnyIOBackend", RecordingBackend)
    return targets


async def test_a_name_is_dialled_at_the_address_that_was_checked(dialled: list[str]) -> None:
    calls: list[str] = []
    pool = ClientPool(
        EgressPolicy(), resolver=mapping_resolver({"api.test": ["127.0.0.1"]}, calls), proxies={}
    )
    recorder = Recorder()
    async with RawServer(answer(200, "{}")) as server:
        token = guard_mod.PHASE_RECORDER.set(recorder)
        try:
            reply = await pool.client().get(f"http://api.test:{server.port}/x")
        finally:
            guard_mod.PHASE_RECORDER.reset(token)
    await pool.aclose()
    assert reply.status_code == 200
    assert calls == ["api.test"]  # resolved once, by us
    assert dialled == ["127.0.0.1"]  # and that very address was dialled, not the name
    assert server.requests[0].headers["host"] == f"api.test:{server.port}"
    assert recorder.phases[:2] == ["dns", "connect"]
    assert "dns" in recorder.phase_ms


async def test_a_name_resolving_to_the_metadata_address_is_never_dialled(
    dialled: list[str],
) -> None:
    pool = ClientPool(
        EgressPolicy(), resolver=mapping_resolver({"meta.test": ["169.254.169.254"]}), proxies={}
    )
    with pytest.raises(EgressDenied) as denied:
        await pool.client().get("http://meta.test/latest/meta-data/")
    await pool.aclose()
    assert denied.value.ip == "169.254.169.254"
    assert dialled == []


async def test_one_denied_answer_among_several_refuses_the_name(dialled: list[str]) -> None:
    pool = ClientPool(
        EgressPolicy(),
        resolver=mapping_resolver({"mixed.test": ["127.0.0.1", "169.254.169.254"]}),
        proxies={},
    )
    with pytest.raises(EgressDenied):
        await pool.client().get("http://mixed.test/")
    await pool.aclose()
    assert dialled == []


ALL_FORMS = [ip for ipv4 in IPV6_FORMS for ip, _ in IPV6_FORMS[ipv4]]


@pytest.fixture
def never_dialled(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The hosts the socket backend was asked to connect to; it connects to none of them (so a
    broken policy fails the test instead of reaching a non-loopback address)."""
    targets: list[str] = []

    class RefusingBackend(httpcore2.AnyIOBackend):
        async def connect_tcp(self, host: str, port: int, *args, **kwargs):  # type: ignore[no-untyped-def]
            targets.append(host)
            raise httpcore2.ConnectError("test: no connection to non-loopback addresses")

    monkeypatch.setattr(httpcore2, "AnyIOBackend", RefusingBackend)
    return targets


@pytest.mark.parametrize("ip", ALL_FORMS)
async def test_a_name_resolving_to_an_ipv6_form_of_a_denied_address_is_never_dialled(
    never_dialled: list[str], ip: str
) -> None:
    resolver = mapping_resolver({"wrapped.test": [ip]})
    pool = ClientPool(
        EgressPolicy.from_strings(deny=CHART_LOOPBACK_DENY), resolver=resolver, proxies={}
    )
    with pytest.raises(EgressDenied) as denied:
        await pool.client().get("http://wrapped.test/latest/meta-data/")
    await pool.aclose()
    assert denied.value.ip == ip
    assert "carries" in denied.value.why
    assert never_dialled == []


@pytest.mark.parametrize("ip", ALL_FORMS)
async def test_an_ipv6_literal_of_a_denied_address_is_refused_without_a_lookup(
    never_dialled: list[str], ip: str
) -> None:
    lookups: list[str] = []
    pool = ClientPool(
        EgressPolicy.from_strings(deny=CHART_LOOPBACK_DENY),
        resolver=mapping_resolver({}, lookups),
        proxies={},
    )
    with pytest.raises(EgressDenied):
        await pool.client().get(f"http://[{ip}]:8080/")
    await pool.aclose()
    assert lookups == []
    assert never_dialled == []


async def test_the_next_address_is_tried_when_one_refuses(dialled: list[str]) -> None:
    async with RawServer(answer(200, "{}")) as server:
        pool = ClientPool(
            EgressPolicy(),
            resolver=mapping_resolver({"two.test": ["::1", "127.0.0.1"]}),
            proxies={},
        )
        reply = await pool.client().get(f"http://two.test:{server.port}/")
        await pool.aclose()
    assert reply.status_code == 200
    assert dialled == ["::1", "127.0.0.1"]  # nothing listens on [::1]:port


async def test_a_failed_lookup_raises_the_dns_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # The system resolver's path, with the loop's lookup answering as for a name that does not
    # exist: the machine's own resolver is never asked.
    asked: list[str] = []

    async def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> list[Any]:
        asked.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    pool = ClientPool(EgressPolicy(), resolver=system_resolver, proxies={})
    with pytest.raises(DNSLookupError) as failed:
        await pool.client().get("http://no-such-host.invalid/")
    await pool.aclose()
    assert asked == ["no-such-host.invalid"]
    assert failed.value.host == "no-such-host.invalid"
    assert "Name or service not known" in str(failed.value)


# --- proxies -----------------------------------------------------------------------------


async def test_behind_a_proxy_the_target_is_checked_before_anything_is_sent() -> None:
    async with RawServer(answer(200, '{"via": "proxy"}')) as proxy:
        pool = ClientPool(
            EgressPolicy(),
            resolver=mapping_resolver(
                {"api.test": ["192.0.2.10"], "meta.test": ["169.254.169.254"]}
            ),
            proxies={"all://": proxy.url, "all://direct.test": None},
        )
        client = pool.client()
        reply = await client.get("http://api.test/v1/models")
        with pytest.raises(EgressDenied):
            await client.get("http://meta.test/latest/")
        with pytest.raises(EgressDenied):
            await client.get("http://169.254.169.254/latest/")
        await pool.aclose()
    assert reply.json() == {"via": "proxy"}
    assert [r.target for r in proxy.requests] == ["http://api.test/v1/models"]


async def test_behind_a_proxy_an_unresolvable_target_is_left_to_the_proxy_unless_allow_listed() -> (
    None
):
    async with RawServer(answer(200, "{}")) as proxy:
        open_pool = ClientPool(
            EgressPolicy(), resolver=mapping_resolver({}), proxies={"all://": proxy.url}
        )
        await open_pool.client().get("http://only-the-proxy-knows.test/")
        await open_pool.aclose()
        strict = ClientPool(
            EgressPolicy.from_strings(allow=["10.0.0.0/8"]),
            resolver=mapping_resolver({}),
            proxies={"all://": proxy.url},
        )
        with pytest.raises(EgressDenied, match="could not be resolved"):
            await strict.client().get("http://only-the-proxy-knows.test/")
        await strict.aclose()
    assert [r.target for r in proxy.requests] == ["http://only-the-proxy-knows.test/"]


async def test_no_proxy_hosts_go_direct_through_the_guard() -> None:
    async with (
        RawServer(answer(200, '{"via": "proxy"}')) as proxy,
        RawServer(answer(200, '{"via": "direct"}')) as direct,
    ):
        pool = ClientPool(
            EgressPolicy(),
            resolver=mapping_resolver({"direct.test": ["127.0.0.1"]}),
            proxies={"all://": proxy.url, "all://direct.test": None},
        )
        reply = await pool.client().get(f"http://direct.test:{direct.port}/")
        await pool.aclose()
    assert reply.json() == {"via": "direct"}
    assert proxy.requests == []


def test_socks_proxies_are_refused_at_startup() -> None:
    with pytest.raises(ValueError, match="only http and https proxies"):
        ClientPool(
            EgressPolicy(), resolver=loopback_only, proxies={"all://": "socks5://proxy:1080"}
        )


def test_proxies_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    monkeypatch.setenv("NO_PROXY", "internal.corp")
    proxies = pool_mod.environment_proxies()
    assert proxies["https://"] == "http://proxy.corp:3128"
    assert proxies["all://*internal.corp"] is None


# --- the client pool ---------------------------------------------------------------------


async def test_clients_are_shared_by_tls_settings() -> None:
    pool = ClientPool(EgressPolicy(), resolver=loopback_only, proxies={})
    default = pool.client()
    assert pool.client(TLSOptions()) is default
    insecure = pool.client(TLSOptions(insecure_skip_verify=True))
    assert insecure is not default
    assert pool.client(TLSOptions(insecure_skip_verify=True)) is insecure
    assert len(pool) == 2
    assert default.follow_redirects is False
    await pool.aclose()
    assert default.is_closed and insecure.is_closed


async def test_the_least_recently_used_client_is_closed_when_the_pool_is_full(
    tmp_path: Path,
) -> None:
    ca_pem = make_tls(tmp_path).ca_pem
    pool = ClientPool(EgressPolicy(), max_clients=1, resolver=loopback_only, proxies={})
    first = pool.client()  # the default client: never evicted
    second = pool.client(TLSOptions(insecure_skip_verify=True))
    async with pool.lease(TLSOptions(insecure_skip_verify=True)) as leased:
        assert leased is second
        assert pool.client() is first  # `second` is now the least recently used
        async with pool.lease(TLSOptions(ca_bundle=ca_pem)):  # evicts `second`, leased
            pass
        assert not second.is_closed  # a leased client outlives its eviction
    assert second.is_closed  # ... and is closed when the lease ends
    assert not first.is_closed
    assert len(pool) == 2
    await pool.aclose()


def test_a_bad_ca_bundle_is_refused() -> None:
    pool = ClientPool(EgressPolicy(), resolver=loopback_only, proxies={})
    with pytest.raises(pool_mod.InvalidCABundle):
        pool.client(TLSOptions(ca_bundle=b"-----BEGIN CERTIFICATE-----\nnot base64\n"))
    with pytest.raises(pool_mod.InvalidCABundle):
        pool.client(TLSOptions(ca_bundle="é".encode()))
    assert len(pool) == 0


async def test_unix_sockets_are_not_offered() -> None:
    backend = guard_mod.GuardedBackend(guard_mod.Guard(EgressPolicy()))
    with pytest.raises(httpcore2.ConnectError):
        await backend.connect_unix_socket("/tmp/x.sock")


async def test_the_client_does_not_follow_redirects_by_itself() -> None:
    async with RawServer(answer(302, "", headers={"Location": "http://elsewhere.test/"})) as s:
        pool = ClientPool(EgressPolicy(), resolver=loopback_only, proxies={})
        reply = await pool.client().get(s.url)
        await pool.aclose()
    assert reply.status_code == 302
    assert isinstance(reply, httpx2.Response)


async def test_a_hanging_lookup_marks_the_dns_phase() -> None:
    async def never(host: str, port: int) -> Sequence[str]:
        await asyncio.Event().wait()
        return []

    pool = ClientPool(EgressPolicy(), resolver=never, proxies={})
    recorder = Recorder()
    token = guard_mod.PHASE_RECORDER.set(recorder)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await pool.client().get("http://slow-dns.test/")
    finally:
        guard_mod.PHASE_RECORDER.reset(token)
    await pool.aclose()
    assert recorder.phase == "dns"


@pytest.mark.parametrize("tls", [False, True])
async def test_a_keep_alive_connection_the_server_closed_is_not_reused(
    tls: bool, tmp_path: Path
) -> None:
    """The pool's idle check (answered from the socket the stream keeps, not anyio's
    attribute mapping) sees the server's close, so the next request dials anew instead of
    failing on a dead connection."""
    files = make_tls(tmp_path) if tls else None

    async def once(head: Any, writer: asyncio.StreamWriter) -> None:
        await answer(200, "{}")(head, writer)
        await writer.drain()
        # No "Connection: close": the client believes it may keep the connection. The TCP
        # connection is ended at once, as servers that reap idle connections do (asyncio's
        # TLS close would wait for the client's close_notify first).
        writer.transport.abort()

    tls_options = TLSOptions(ca_bundle=files.ca_pem) if files else TLSOptions()
    async with RawServer(once, tls=files.server_context() if files else None) as server:
        pool = ClientPool(EgressPolicy(), resolver=loopback_only, proxies={})
        client = pool.client(tls_options)
        for _ in range(3):
            assert (await client.get(server.url + "/v1/models")).status_code == 200
            await asyncio.sleep(0.05)  # the server's FIN arrives
        await pool.aclose()
    assert server.connections == 3


async def test_http2_is_spoken_where_the_server_offers_it(tmp_path: Path) -> None:
    """Providers that offer HTTP/2 (ALPN) get it through the guarded backend: one
    multiplexed connection for requests at once, and a body larger than the stream holds
    unread (read on as the probe reads, under HTTP/2's flow control)."""
    files = make_tls(tmp_path)
    body = b'{"data": "' + b"x" * (600 * 1024) + b'"}'
    async with H2Server(body, tls=files.server_context()) as server:
        pool = ClientPool(EgressPolicy(), resolver=loopback_only, proxies={})
        client = pool.client(TLSOptions(ca_bundle=files.ca_pem))
        first = await client.get(server.url + "/v1/models")
        replies = await asyncio.gather(*(client.get(server.url + "/v1/models") for _ in range(8)))
        await pool.aclose()
    assert first.http_version == "HTTP/2"
    assert first.content == body
    assert all(r.status_code == 200 and r.content == body for r in replies)
    assert server.requests == 9
    assert server.connections == 1


async def test_a_tls_handshake_cut_short_by_the_deadline_closes_the_connection() -> None:
    """A probe's deadline that cancels the handshake ends the TCP connection at once (the
    server sees it closed), instead of leaving the socket open until garbage collection
    (`_ClosingStream`)."""
    async with RawServer(answer(200)) as server:  # plain TCP: the ClientHello goes unanswered
        pool = ClientPool(EgressPolicy(), resolver=loopback_only, proxies={})
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await pool.client().get(server.url.replace("http://", "https://"))
        for _ in range(100):
            if not server._tasks:  # the server's handler saw the end of the connection
                break
            await asyncio.sleep(0.01)
        assert server.connections == 1 and not server._tasks
        await pool.aclose()
