"""RFC 3261 §16.4 Route preprocessing, "is this us?", and Record-Route values (RFC 5658)."""

from __future__ import annotations

import pytest

try:
    from tests.proxy_helpers import ALICE_TCP, LOCAL, Harness, binding, make_request
except ImportError:  # pragma: no cover
    from proxy_helpers import ALICE_TCP, LOCAL, Harness, binding, make_request  # type: ignore[no-redef]

from sipproxy.message import parse_uri
from sipproxy.proxy import LocalAddress
from sipproxy.proxy.routing import Locality, preprocess_routing, record_route_values

LOCALITY = Locality(LOCAL, {"example.test", "192.0.2.1"})


@pytest.mark.parametrize(
    ("uri", "us"),
    [
        ("sip:192.0.2.1", True),
        ("sip:192.0.2.1:5060;lr", True),
        ("sip:192.0.2.1:5070;lr", False),  # a user agent next to us, not us
        ("sip:example.test;lr", True),
        ("sip:EXAMPLE.test:5060", True),
        ("sip:example.test:5080", False),
        ("sip:other.test;lr", False),
        ("sip:bob@example.test", True),
        ("tel:+1555", False),
    ],
)
def test_is_us(uri: str, us: bool) -> None:
    assert LOCALITY.is_us(parse_uri(uri)) is us


def test_our_route_is_popped_and_the_next_is_the_hop() -> None:
    request = make_request(
        "BYE",
        "sip:bob@192.0.2.20:5062",
        to="Bob <sip:bob@example.test>;tag=b1",
        headers=("Route: <sip:192.0.2.1;lr>, <sip:192.0.2.99:5070;lr>",),
    )
    preprocess_routing(request, LOCALITY)
    assert request.get_all("route") == ["<sip:192.0.2.99:5070;lr>"]
    assert request.uri_text == "sip:bob@192.0.2.20:5062"


def test_double_record_route_pops_both_of_our_routes() -> None:
    request = make_request(
        "BYE",
        "sip:bob@192.0.2.20:5062",
        headers=("Route: <sip:192.0.2.1:5060;transport=tcp;lr>", "Route: <sip:192.0.2.1:5060;lr>"),
    )
    preprocess_routing(request, LOCALITY)
    assert request.get_all("route") == []


def test_foreign_route_is_kept() -> None:
    request = make_request("BYE", "sip:bob@192.0.2.20", headers=("Route: <sip:192.0.2.99;lr>",))
    preprocess_routing(request, LOCALITY)
    assert request.get_all("route") == ["<sip:192.0.2.99;lr>"]


def test_strict_router_request_uri_is_restored_from_the_last_route() -> None:
    """A strict router upstream put our Record-Route URI in the Request-URI and the remote target last in Route."""
    request = make_request(
        "BYE",
        "sip:192.0.2.1:5060;lr",
        headers=("Route: <sip:192.0.2.99;lr>", "Route: <sip:bob@192.0.2.20:5062>"),
    )
    preprocess_routing(request, LOCALITY)
    assert request.uri_text == "sip:bob@192.0.2.20:5062"
    assert request.get_all("route") == ["<sip:192.0.2.99;lr>"]


def test_maddr_naming_us_is_stripped() -> None:
    request = make_request("INVITE", "sip:bob@example.test:5060;maddr=192.0.2.1;transport=udp")
    preprocess_routing(request, LOCALITY)
    assert request.uri_text == "sip:bob@example.test"


def test_foreign_maddr_is_kept() -> None:
    request = make_request("INVITE", "sip:bob@example.test;maddr=192.0.2.77")
    preprocess_routing(request, LOCALITY)
    assert request.uri_text == "sip:bob@example.test;maddr=192.0.2.77"


def test_record_route_values() -> None:
    assert record_route_values(LOCAL, "UDP", "UDP") == ["<sip:192.0.2.1:5060;lr>"]
    assert record_route_values(LOCAL, "TCP", "TCP") == ["<sip:192.0.2.1:5060;transport=tcp;lr>"]
    assert record_route_values(LOCAL, "TCP", "UDP") == [
        "<sip:192.0.2.1:5060;lr>",
        "<sip:192.0.2.1:5060;transport=tcp;lr>",
    ]
    assert record_route_values(LocalAddress("2001:db8::1", 5080), "UDP", "UDP") == ["<sip:[2001:db8::1]:5080;lr>"]


def test_in_dialog_bye_is_loose_routed_statefully() -> None:
    h = Harness()
    stx = h.send(
        make_request(
            "BYE",
            "sip:bob@192.0.2.20:5062",
            to="Bob <sip:bob@example.test>;tag=b1",
            headers=("Route: <sip:192.0.2.1:5060;lr>",),
        )
    )
    (client,) = h.branches("BYE")
    assert client.target == ("UDP", "192.0.2.20", 5062)
    assert client.request.uri_text == "sip:bob@192.0.2.20:5062"
    assert not client.request.has("Route")
    assert not client.request.has("Record-Route")  # BYE is not record-routed
    h.reply(client, 200)
    assert stx.statuses == [200]
    assert h.proxy.active_contexts() == 0


def test_in_dialog_request_with_a_remaining_route_goes_to_that_route() -> None:
    h = Harness()
    h.register(binding())  # an own-domain Request-URI, but the Route decides
    h.send(
        make_request(
            "INFO",
            "sip:bob@example.test",
            to="Bob <sip:bob@example.test>;tag=b1",
            headers=("Route: <sip:192.0.2.1;lr>, <sip:edge.example.net:5070;lr;transport=tcp>",),
        ),
    )
    assert h.dns_queries == ["edge.example.net"]  # no answer in the fake DNS: the branch fails


def test_in_dialog_request_over_tcp_from_our_double_record_route() -> None:
    h = Harness()
    h.send(
        make_request(
            "BYE",
            "sip:bob@192.0.2.20:5062",
            transport="TCP",
            to="Bob <sip:bob@example.test>;tag=b1",
            headers=("Route: <sip:192.0.2.1:5060;transport=tcp;lr>", "Route: <sip:192.0.2.1:5060;lr>"),
        ),
        ALICE_TCP,
    )
    (client,) = h.branches("BYE")
    assert client.target == ("UDP", "192.0.2.20", 5062)
    assert client.request.top_via.transport == "UDP"
    assert not client.request.has("Route")
