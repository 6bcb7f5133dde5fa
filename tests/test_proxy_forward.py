"""RFC 3261 §16.6: what the forwarded copy looks like."""

from __future__ import annotations

import pytest

try:
    from tests.proxy_helpers import ALICE, ALICE_TCP, Harness, binding, make_request
except ImportError:  # pragma: no cover
    from proxy_helpers import ALICE, ALICE_TCP, Harness, binding, make_request  # type: ignore[no-redef]

from sipproxy.message import Request
from sipproxy.proxy import ProxySettings
from sipproxy.proxy.validate import loop_part, split_branch

SDP = "v=0\r\no=alice 1 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"


def _forward(method: str = "INVITE", **kw: object) -> tuple[Harness, Request]:
    h = Harness()
    h.register(binding())
    request = make_request(method, "sip:bob@example.test", **kw)  # type: ignore[arg-type]
    h.send(request, ALICE_TCP if kw.get("transport") == "TCP" else ALICE)
    return h, request


def test_our_via_is_on_top_with_a_magic_cookie_branch_carrying_the_loop_part() -> None:
    h, request = _forward()
    (client,) = h.branches()
    vias = client.request.vias
    assert len(vias) == 2
    ours = vias[0]
    assert (ours.transport, ours.host, ours.port) == ("UDP", "192.0.2.1", 5060)
    split = split_branch(ours.branch)
    assert split is not None
    assert split[0] == loop_part(request)
    assert vias[1].branch == request.top_via.branch


def test_every_branch_gets_its_own_branch_parameter() -> None:
    h = Harness()
    h.register(
        binding(contact="sip:bob@192.0.2.20"), binding(contact="sip:bob@192.0.2.21", source=("192.0.2.21", 5060))
    )
    h.send(make_request("INVITE", "sip:bob@example.test"))
    a, b = h.branches()
    assert a.request.top_via.branch != b.request.top_via.branch
    assert split_branch(a.request.top_via.branch)[0] == split_branch(b.request.top_via.branch)[0]  # type: ignore[index]


def test_invite_is_record_routed_with_lr() -> None:
    h, _ = _forward()
    (client,) = h.branches()
    assert client.request.get_all("record-route") == ["<sip:192.0.2.1:5060;lr>"]


def test_record_route_goes_above_existing_ones() -> None:
    h, _ = _forward(headers=("Record-Route: <sip:192.0.2.88;lr>",))
    (client,) = h.branches()
    assert client.request.get_all("record-route") == ["<sip:192.0.2.1:5060;lr>", "<sip:192.0.2.88;lr>"]


def test_transport_change_gets_two_record_routes() -> None:
    """TCP in, UDP out (RFC 5658): top value for the outgoing side, second for the incoming side."""
    h, _ = _forward(transport="TCP")
    (client,) = h.branches()
    assert client.request.top_via.transport == "UDP"
    assert client.request.get_all("record-route") == [
        "<sip:192.0.2.1:5060;lr>",
        "<sip:192.0.2.1:5060;transport=tcp;lr>",
    ]


def test_tcp_out_record_route_says_tcp() -> None:
    h = Harness()
    h.register(binding(contact="sip:bob@192.0.2.20:5060;transport=tcp", transport="TCP", source=("192.0.2.20", 5060)))
    h.send(make_request("INVITE", "sip:bob@example.test", transport="TCP"), ALICE_TCP)
    (client,) = h.branches()
    assert client.request.get_all("record-route") == ["<sip:192.0.2.1:5060;transport=tcp;lr>"]
    assert client.request.top_via.transport == "TCP"


@pytest.mark.parametrize("method", ["MESSAGE", "OPTIONS", "PUBLISH", "INFO"])
def test_no_record_route_for_methods_that_create_no_dialog(method: str) -> None:
    h, _ = _forward(method)
    (client,) = h.branches(method)
    assert not client.request.has("record-route")


@pytest.mark.parametrize("method", ["SUBSCRIBE", "REFER", "NOTIFY"])
def test_record_route_for_dialog_creating_methods(method: str) -> None:
    h, _ = _forward(method)
    (client,) = h.branches(method)
    assert client.request.get_all("record-route") == ["<sip:192.0.2.1:5060;lr>"]


def test_record_route_can_be_switched_off() -> None:
    h = Harness(ProxySettings(record_route=False))
    h.register(binding())
    h.send(make_request("INVITE", "sip:bob@example.test"))
    assert not h.branches()[0].request.has("record-route")


def test_untouched_headers_are_byte_identical() -> None:
    odd = (
        "Subject:   lunch?  ",
        'X-Custom: a,b;c="d"',
        'Contact: "Alice" <sip:alice@192.0.2.7:5060>;+sip.instance="<urn:uuid:1>"',
        "User-Agent: test/1.0",
    )
    h, request = _forward(headers=odd, body=SDP)
    (client,) = h.branches()
    original = request.to_bytes().decode()
    forwarded = client.request.to_bytes().decode()
    changed = {"via", "max-forwards", "record-route"}
    original_lines = [line for line in original.split("\r\n") if line.split(":")[0].lower() not in changed]
    forwarded_lines = [line for line in forwarded.split("\r\n") if line.split(":")[0].lower() not in changed]
    assert forwarded_lines[1:] == original_lines[1:]  # everything but the request line
    assert forwarded.split("\r\n")[0] == "INVITE sip:bob@192.0.2.20:5060 SIP/2.0"
    assert client.request.body == SDP.encode()
    # the caller's Via line is kept as written, below ours
    assert original.split("\r\n")[1] in forwarded.split("\r\n")


def test_the_server_transaction_keeps_the_request_as_received() -> None:
    h = Harness()
    request = make_request("INVITE", "sip:bob@192.0.2.20", headers=("Route: <sip:192.0.2.1;lr>",))
    stx = h.send(request)
    assert stx.request.get_all("route") == ["<sip:192.0.2.1;lr>"]
    assert not h.branches()[0].request.has("route")
