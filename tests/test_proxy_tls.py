"""The proxy's side of TLS: our TLS port in Via and Record-Route, sips: (RFC 3261 §16.6 step 4, §26.2.2)."""

from __future__ import annotations

try:
    from tests.proxy_helpers import Harness, binding, make_request
except ImportError:  # pragma: no cover
    from proxy_helpers import Harness, binding, make_request  # type: ignore[no-redef]

from sipproxy.message import parse_uri, parse_via
from sipproxy.net import NamedTarget
from sipproxy.proxy import LocalAddress
from sipproxy.proxy.branch import SIPS_OVER_TLS_ONLY
from sipproxy.proxy.forward import add_via
from sipproxy.proxy.routing import Locality, add_record_route, record_route_values

TLS_LOCAL = LocalAddress("192.0.2.1", 5060, 5061)
LOCALITY = Locality(TLS_LOCAL, {"example.test"})


def test_a_change_to_tls_gives_two_record_routes_each_with_its_transport_port() -> None:
    assert record_route_values(TLS_LOCAL, "UDP", "TLS") == [
        "<sip:192.0.2.1:5061;transport=tls;lr>",
        "<sip:192.0.2.1:5060;lr>",
    ]
    assert record_route_values(TLS_LOCAL, "TLS", "TCP") == [
        "<sip:192.0.2.1:5060;transport=tcp;lr>",
        "<sip:192.0.2.1:5061;transport=tls;lr>",
    ]
    assert record_route_values(TLS_LOCAL, "TLS", "TLS") == ["<sip:192.0.2.1:5061;transport=tls;lr>"]


def test_a_sips_request_gets_a_sips_record_route_on_its_tls_side() -> None:
    request = make_request("INVITE", "sips:bob@example.test", transport="TLS")
    add_record_route(request, TLS_LOCAL, "UDP", "TLS")
    assert request.get_all("record-route") == ["<sips:192.0.2.1:5061;lr>", "<sip:192.0.2.1:5060;lr>"]


def test_our_via_on_tls_names_the_tls_port() -> None:
    request = make_request()
    add_via(request, TLS_LOCAL, "TLS", "z9hG4bK-1")
    assert request.get_all("via")[0] == "SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK-1"


def test_the_tls_port_is_us_too() -> None:
    assert LOCALITY.is_us(parse_uri("sip:192.0.2.1:5061;transport=tls;lr"))
    assert LOCALITY.is_us(parse_uri("sips:192.0.2.1;lr"))
    assert not LOCALITY.is_us(parse_uri("sip:192.0.2.1:5062;lr"))
    assert LOCALITY.is_our_via(parse_via("SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK-1"))
    assert LOCALITY.is_our_via(parse_via("SIP/2.0/TLS 192.0.2.1;branch=z9hG4bK-1"))
    assert not Locality(LocalAddress("192.0.2.1", 5060), {"example.test"}).is_us(parse_uri("sip:192.0.2.1:5061"))


def test_a_sips_request_for_a_phone_reached_only_over_udp_is_480() -> None:
    h = Harness()
    h.register(binding())  # bob over UDP
    stx = h.send(make_request("INVITE", "sips:bob@example.test", to="Bob <sips:bob@example.test>"))
    assert h.branches("INVITE") == []  # nothing left over UDP
    final = stx.last_response
    assert final is not None and (final.status, final.reason) == (480, SIPS_OVER_TLS_ONLY)


def test_a_sips_request_reaches_a_phone_registered_over_tls_on_its_connection() -> None:
    h = Harness()
    h.register(binding(contact="sip:bob@192.0.2.20:5061;transport=tls", transport="TLS", source=("192.0.2.20", 40999)))
    h.send(make_request("INVITE", "sips:bob@example.test", to="Bob <sips:bob@example.test>"))
    [client] = h.branches("INVITE")
    assert client.target == ("TLS", "192.0.2.20", 40999)
    assert client.request.get_all("via")[0].startswith("SIP/2.0/TLS ")


def test_a_named_target_keeps_its_name_through_replace() -> None:
    target = NamedTarget("TLS", "[2001:db8::1]", 5061, "trunk.example.net")
    assert target._replace(host="2001:db8::1").name == "trunk.example.net"
    assert target == ("TLS", "[2001:db8::1]", 5061)


def test_the_branch_sends_to_the_resolved_tls_target_with_the_name_its_certificate_must_show() -> None:
    h = Harness()
    asked: list[object] = []

    def resolve(hop: object, found: object) -> None:
        asked.append(hop)
        found([NamedTarget("TLS", "198.51.100.7", 5061, "trunk.example.net")])  # type: ignore[operator]

    h.proxy.resolve = resolve  # type: ignore[method-assign]
    h.send(make_request("INVITE", "sips:carol@trunk.example.net", to="<sips:carol@trunk.example.net>"))
    [client] = h.branches("INVITE")
    assert client.target == ("TLS", "198.51.100.7", 5061)
    assert client.target.name == "trunk.example.net"
