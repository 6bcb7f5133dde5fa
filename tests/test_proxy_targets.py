"""RFC 3261 §16.5: the target set, next hops, NAT/TCP flows, Path, DNS through the injected resolver."""

from __future__ import annotations

from typing import Any

import pytest

try:
    from tests.proxy_helpers import ALICE_TCP, Harness, binding, make_request
except ImportError:  # pragma: no cover
    from proxy_helpers import ALICE_TCP, Harness, binding, make_request  # type: ignore[no-redef]

from sipproxy.locality import canonical_aor
from sipproxy.message import Response, parse_uri
from sipproxy.proxy.targets import TargetURI, group_by_q, next_hop, redirect_targets, target_from_binding
from sipproxy.transaction import Target


@pytest.mark.parametrize(
    ("uri", "hop"),
    [
        ("sip:bob@192.0.2.20", ("UDP", "192.0.2.20", 5060)),
        ("sip:bob@192.0.2.20:5062", ("UDP", "192.0.2.20", 5062)),
        ("sip:bob@192.0.2.20;transport=TCP", ("TCP", "192.0.2.20", 5060)),
        ("sip:bob@host.example.net;maddr=192.0.2.44", ("UDP", "192.0.2.44", 5060)),
        ("sips:bob@192.0.2.20", ("TLS", "192.0.2.20", 5061)),
        ("sip:bob@192.0.2.20;transport=tls", ("TLS", "192.0.2.20", 5061)),
        ("sip:bob@[2001:db8::5]:5070", ("UDP", "2001:db8::5", 5070)),
    ],
)
def test_next_hop(uri: str, hop: tuple[str, str, int]) -> None:
    assert next_hop(parse_uri(uri)) == Target(*hop)  # type: ignore[arg-type]


def test_binding_reached_directly_when_contact_is_its_source() -> None:
    target = target_from_binding(binding())
    assert target is not None and target.flow is None


def test_binding_behind_nat_is_reached_at_its_source() -> None:
    target = target_from_binding(binding(contact="sip:bob@10.0.0.5:5060", source=("198.51.100.9", 34567)))
    assert target is not None
    assert target.flow == Target("UDP", "198.51.100.9", 34567)
    assert str(target.uri) == "sip:bob@10.0.0.5:5060"


def test_same_host_other_port_uses_the_contact() -> None:
    """A UA registering from one socket and listening on another (sipp's bench does) is no NAT."""
    target = target_from_binding(binding(contact="sip:bob@192.0.2.20:5090", source=("192.0.2.20", 5091)))
    assert target is not None and target.flow is None


def test_tcp_binding_is_reached_over_its_connection() -> None:
    target = target_from_binding(
        binding(contact="sip:bob@192.0.2.20:5060;transport=tcp", transport="TCP", source=("192.0.2.20", 40002))
    )
    assert target is not None and target.flow == Target("TCP", "192.0.2.20", 40002)


def test_binding_with_path_is_reached_through_the_path() -> None:
    target = target_from_binding(binding(path=("<sip:edge.example.test;lr>",), source=("192.0.2.50", 5060)))
    assert target is not None and target.flow is None and target.path == ("<sip:edge.example.test;lr>",)


def test_group_by_q() -> None:
    uri = parse_uri("sip:x@192.0.2.1")
    targets = [TargetURI(uri, 0.5), TargetURI(uri, 1.0), TargetURI(uri, 0.5), TargetURI(uri, 0.1)]
    assert [[t.q for t in g] for g in group_by_q(targets)] == [[1.0], [0.5, 0.5], [0.1]]


def test_redirect_targets_take_q_from_the_contact_and_keep_a_contact_with_a_bad_q() -> None:
    """§16.5: a 3xx's Contacts by q (parsed by ``NameAddr.q``); a q that is no qvalue counts as 1.0."""
    response = Response(302, "Moved Temporarily")
    response.add("Contact", "<sip:low@192.0.2.40>;q=0.2, <sip:high@192.0.2.41>;q=0.9, <sip:odd@192.0.2.42>;q=high")
    response.add("Contact", "<sip:wide@192.0.2.43>;q=1.5, tel:+15551234567, <sip:plain@192.0.2.44>")
    targets = redirect_targets(response, depth=1)
    assert [(t.uri.user, t.q) for t in targets] == [
        ("odd", 1.0),
        ("wide", 1.0),
        ("plain", 1.0),
        ("high", 0.9),
        ("low", 0.2),
    ]
    assert {t.depth for t in targets} == {1}


def test_own_domain_goes_to_the_registered_contacts() -> None:
    h = Harness()
    h.register(binding(contact="sip:bob@192.0.2.20:5062", source=("192.0.2.20", 5062)))
    h.send(make_request("INVITE", "sip:bob@example.test"))
    (client,) = h.branches()
    assert client.request.uri_text == "sip:bob@192.0.2.20:5062"
    assert client.target == Target("UDP", "192.0.2.20", 5062)


def test_own_domain_aor_is_canonical() -> None:
    h = Harness()
    h.register(binding())
    h.send(make_request("INVITE", "sip:bob@EXAMPLE.TEST;user=phone"))
    assert len(h.branches()) == 1


@pytest.mark.parametrize("uri", ["sip:bob@192.0.2.1", "sip:bob@192.0.2.1:5060", "sip:bob@example.test:5060"])
def test_aor_is_looked_up_without_the_port_as_the_registrar_stores_it(uri: str) -> None:
    """§16.5 with the registrar's canonical AOR: a phone that registered ``To: <sip:bob@192.0.2.1:5060>``."""
    h = Harness()
    aor = canonical_aor(parse_uri(uri))  # type: ignore[arg-type]
    h.register(binding(aor=aor))
    h.send(make_request("INVITE", uri))
    (client,) = h.branches()
    assert client.request.uri_text == "sip:bob@192.0.2.20:5060"


def test_binding_restored_under_the_aor_with_its_port_is_still_reached() -> None:
    """A database from before AORs lost their port: the Request-URI's AOR with its port is looked up next."""
    h = Harness()
    h.register(binding(aor="sip:bob@192.0.2.1:5060"))
    h.send(make_request("INVITE", "sip:bob@192.0.2.1:5060"))
    (client,) = h.branches()
    assert client.request.uri_text == "sip:bob@192.0.2.20:5060"


def test_nat_binding_target_is_the_source_address() -> None:
    h = Harness()
    h.register(binding(contact="sip:bob@10.0.0.5:5060", source=("198.51.100.9", 34567)))
    h.send(make_request("INVITE", "sip:bob@example.test"))
    (client,) = h.branches()
    assert client.request.uri_text == "sip:bob@10.0.0.5:5060"
    assert client.target == Target("UDP", "198.51.100.9", 34567)


def test_tcp_binding_target() -> None:
    h = Harness()
    h.register(binding(contact="sip:bob@192.0.2.20:40002;transport=tcp", transport="TCP", source=("192.0.2.20", 40002)))
    h.send(make_request("INVITE", "sip:bob@example.test"))
    (client,) = h.branches()
    assert client.target == Target("TCP", "192.0.2.20", 40002)
    assert client.request.top_via.transport == "TCP"


def test_own_domain_without_binding_is_480() -> None:
    h = Harness()
    stx = h.send(make_request("INVITE", "sip:nobody@example.test"))
    assert stx.statuses == [480]
    assert stx.responses[0].to.tag
    assert h.proxy.active_contexts() == 0


def test_foreign_domain_goes_to_the_request_uri_host() -> None:
    h = Harness(dns={"elsewhere.example.net": "198.51.100.80"})
    h.send(make_request("INVITE", "sip:carol@elsewhere.example.net"))
    (client,) = h.branches()
    assert h.dns_queries == ["elsewhere.example.net"]
    assert client.target == Target("UDP", "198.51.100.80", 5060)
    assert client.request.uri_text == "sip:carol@elsewhere.example.net"


def test_ip_literals_never_go_through_dns() -> None:
    h = Harness()
    h.send(make_request("INVITE", "sip:carol@[2001:db8::7]:5070"))
    assert h.dns_queries == []
    assert h.branches()[0].target == Target("UDP", "2001:db8::7", 5070)


def test_unresolvable_host_fails_the_branch_like_a_transport_error() -> None:
    """§16.9: a branch that cannot be sent is a 503, which as the best response becomes 500."""
    h = Harness(dns={})
    stx = h.send(make_request("INVITE", "sip:carol@nowhere.example.net"))
    assert stx.statuses == [500]
    assert h.tx.sent == []
    assert h.proxy.active_contexts() == 0


def test_dns_answer_may_come_later() -> None:
    h = Harness(defer_dns=True)
    h.send(make_request("MESSAGE", "sip:carol@later.example.net"))
    assert h.tx.sent == []
    ((host, callback),) = h.pending_dns
    callback("198.51.100.81")
    (client,) = h.branches("MESSAGE")
    assert client.target == Target("UDP", "198.51.100.81", 5060)


def test_dns_answer_after_the_caller_cancelled_is_ignored() -> None:
    h = Harness(defer_dns=True)
    invite = make_request("INVITE", "sip:carol@later.example.net")
    stx = h.send(invite)
    cancel_stx = h.send(h.tx.build_cancel(invite))
    assert cancel_stx.statuses == [200]
    assert stx.statuses == [487]
    h.pending_dns[0][1]("198.51.100.81")
    assert h.tx.sent == []


def test_path_becomes_route_and_the_first_path_hop_is_the_next_hop() -> None:
    h = Harness(dns={"edge.example.test": "192.0.2.50"})
    h.register(
        binding(
            path=("<sip:edge.example.test;lr>", "<sip:192.0.2.51:5070;lr>"),
            source=("192.0.2.50", 5060),
        )
    )
    h.send(make_request("INVITE", "sip:bob@example.test"))
    (client,) = h.branches()
    assert client.request.get_all("route") == ["<sip:edge.example.test;lr>", "<sip:192.0.2.51:5070;lr>"]
    assert client.request.uri_text == "sip:bob@192.0.2.20:5060"
    assert client.target == Target("UDP", "192.0.2.50", 5060)


def test_strict_next_hop_takes_the_request_uri() -> None:
    """§16.6 step 6: a Route without lr is a strict router: it becomes the Request-URI."""
    h = Harness()
    h.send(make_request("MESSAGE", "sip:carol@192.0.2.30", headers=("Route: <sip:192.0.2.99:5070>",)))
    (client,) = h.branches("MESSAGE")
    assert client.request.uri_text == "sip:192.0.2.99:5070"
    assert client.request.get_all("route") == ["<sip:carol@192.0.2.30>"]
    assert client.target == Target("UDP", "192.0.2.99", 5070)


def test_request_over_tcp_to_udp_target() -> None:
    h = Harness()
    h.register(binding())
    h.send(make_request("INVITE", "sip:bob@example.test", transport="TCP"), ALICE_TCP)
    (client,) = h.branches()
    assert client.target.transport == "UDP"


def test_max_branches_limits_the_target_set() -> None:
    from sipproxy.proxy import ProxySettings

    h = Harness(ProxySettings(max_branches=2))
    h.register(*(binding(contact=f"sip:bob@192.0.2.{20 + i}") for i in range(5)))
    h.send(make_request("INVITE", "sip:bob@example.test"))
    assert len(h.branches()) == 2


@pytest.mark.parametrize(
    ("uri", "hop"),
    [
        ("sip:bob@other.example", ("UDP", "other.example", 5060, False, False, False)),
        ("sip:bob@other.example:5070", ("UDP", "other.example", 5070, False, True, False)),
        ("sip:bob@other.example;transport=tcp", ("TCP", "other.example", 5060, True, False, False)),
        ("sips:bob@other.example", ("TLS", "other.example", 5061, False, False, True)),
        ("sips:bob@other.example;transport=tcp", ("TLS", "other.example", 5061, True, False, True)),
    ],
)
def test_uri_hop_says_what_the_uri_gave_for_rfc3263(uri: str, hop: tuple[Any, ...]) -> None:
    """RFC 3263 §4.1: an explicit port means A/AAAA only, an explicit transport SRV, neither NAPTR first."""
    from sipproxy.net import NextHop
    from sipproxy.proxy.targets import uri_hop

    assert uri_hop(parse_uri(uri)) == NextHop(*hop)  # type: ignore[arg-type]
