"""Tests for the proxy's RFC 5626 outbound part: flow tokens in Record-Route, in-dialog requests on the flow,
403/430, and failover to the instance's next flow (on a task.Clock, with a fake transaction layer)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sipproxy.flowtoken import Flow, FlowTokens
from sipproxy.location.binding import flow_key
from sipproxy.message import parse_name_addr
from sipproxy.proxy.targets import TargetURI
from sipproxy.transaction import Source, Target

try:
    from tests.proxy_helpers import ALICE, Harness, binding, make_request
except ImportError:  # pragma: no cover
    from proxy_helpers import ALICE, Harness, binding, make_request  # type: ignore[no-redef]

SECRET = b"k" * 32
UUID = "<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"
WS_CONTACT = "sip:bob@df7jal23ls0d.invalid;transport=ws"
BOB_WS = Source("WS", "192.0.2.30", 53211)
BOB_FLOW = Target("WS", "192.0.2.30", 53211)


def ws_binding(contact: str = WS_CONTACT, port: int = 53211, reg_id: int = 1, refreshed_at: float = 0.0):  # type: ignore[no-untyped-def]
    b = binding(contact=contact, transport="WS", source=("192.0.2.30", port), refreshed_at=refreshed_at)
    return replace(b, instance=UUID, reg_id=reg_id)


class Outbound:
    """A harness whose proxy signs flow tokens, knows which connections are open, and drops failed flows."""

    def __init__(self) -> None:
        self.open: set[Target] = {BOB_FLOW}
        self.failed: list[TargetURI] = []
        self.h = Harness(
            flow_tokens=FlowTokens(SECRET),
            flow_open=lambda t: Target(t.transport, t.host, t.port) in self.open,
            flow_failed=self.drop,
        )

    def drop(self, target: TargetURI) -> None:
        self.failed.append(target)
        assert target.aor is not None
        self.h.store.remove(target.aor, target.contact, reason="flow-lost")


@pytest.fixture
def ob() -> Outbound:
    return Outbound()


def record_routes(ob: Outbound) -> list[str]:
    [client] = ob.h.branches()
    return client.request.get_all("record-route")


def call_bob(ob: Outbound) -> list[str]:
    """Alice (UDP) calls Bob (WS); returns the Record-Route values Bob's INVITE carried."""
    ob.h.register(ws_binding())
    ob.h.send(make_request())
    return record_routes(ob)


def test_an_invite_to_a_websocket_phone_goes_over_its_flow_with_a_flow_token_facing_it(ob: Outbound) -> None:
    rr = call_bob(ob)
    [client] = ob.h.branches()
    assert client.target == BOB_FLOW
    assert client.request.uri_text == WS_CONTACT
    # two values (UDP in, WS out); the token only on the WS side's, naming Bob's flow
    assert len(rr) == 2 and ";ft=" in rr[0] and ";ft=" not in rr[1]
    token = parse_name_addr(rr[0]).uri.params["ft"]  # type: ignore[union-attr]
    assert FlowTokens(SECRET).decode(token) == Flow("WS", "192.0.2.1:5060", "192.0.2.30", 53211)


def in_dialog(method: str, routes: list[str], uri: str, *, transport: str = "UDP", from_bob: bool = False):  # type: ignore[no-untyped-def]
    headers = tuple(f"Route: {r}" for r in routes)
    who = dict(from_="Bob <sip:bob@example.test>;tag=callee", to="Alice <sip:alice@example.test>;tag=a1")
    if not from_bob:
        who = dict(from_="Alice <sip:alice@example.test>;tag=a1", to="Bob <sip:bob@example.test>;tag=callee")
    return make_request(method, uri, transport=transport, headers=headers, **who)


def test_the_callers_bye_to_the_invalid_contact_follows_the_flow(ob: Outbound) -> None:
    rr = call_bob(ob)
    ob.h.tx.sent.clear()
    # Alice's route set is the Record-Route reversed (RFC 3261 §12.1.2); her BYE targets Bob's Contact
    ob.h.send(in_dialog("BYE", list(reversed(rr)), WS_CONTACT))
    [client] = ob.h.branches("BYE")
    assert client.target == BOB_FLOW and client.request.uri_text == WS_CONTACT
    assert not client.request.has("route")


def test_the_callers_ack_for_the_2xx_follows_the_flow_too(ob: Outbound) -> None:
    rr = call_bob(ob)
    ob.h.send(in_dialog("ACK", list(reversed(rr)), WS_CONTACT))
    [(ack, target)] = ob.h.stateless
    assert target == BOB_FLOW and ack.uri_text == WS_CONTACT  # type: ignore[union-attr]


def test_the_phones_own_bye_goes_to_the_callers_contact_not_back_over_its_flow(ob: Outbound) -> None:
    rr = call_bob(ob)
    ob.h.tx.sent.clear()
    ob.h.send(in_dialog("BYE", rr, "sip:alice@192.0.2.7:5060", transport="WS", from_bob=True), BOB_WS)
    [client] = ob.h.branches("BYE")
    assert client.target == Target("UDP", "192.0.2.7", 5060)


def test_one_record_route_with_one_token_still_tells_the_directions_apart(ob: Outbound) -> None:
    # Both on UDP (one transport), Bob an outbound phone behind a NAT: one Record-Route value, with
    # Bob's token.  Alice's BYE follows it; Bob's own BYE, from that very flow, goes by its Request-URI.
    nat = Source("UDP", "203.0.113.9", 40000)
    bob = replace(binding(contact="sip:bob@10.0.0.5:5060", source=("203.0.113.9", 40000)), instance=UUID, reg_id=1)
    ob.h.register(bob)
    ob.h.send(make_request())
    [rr] = record_routes(ob)
    assert ";ft=" in rr
    ob.h.tx.sent.clear()
    ob.h.send(in_dialog("BYE", [rr], "sip:bob@10.0.0.5:5060"))
    assert [c.target for c in ob.h.branches("BYE")] == [Target("UDP", "203.0.113.9", 40000)]
    ob.h.tx.sent.clear()
    ob.h.send(in_dialog("BYE", [rr], "sip:alice@192.0.2.7:5060", from_bob=True), nat)
    assert [c.target for c in ob.h.branches("BYE")] == [Target("UDP", "192.0.2.7", 5060)]


def test_two_websocket_phones_get_two_record_routes_each_with_its_own_token(ob: Outbound) -> None:
    ob.h.register(ws_binding())
    carol = Source("WS", "192.0.2.40", 41000)
    ob.open.add(Target("WS", "192.0.2.40", 41000))
    ob.h.send(make_request(transport="WS", headers=("Contact: <sip:carol@x.invalid;transport=ws;ob>",)), carol)
    rr = record_routes(ob)
    assert len(rr) == 2 and all(";ft=" in value for value in rr)
    ob.h.tx.sent.clear()
    ob.h.send(in_dialog("BYE", rr, "sip:carol@x.invalid;transport=ws", transport="WS", from_bob=True), BOB_WS)
    assert [c.target for c in ob.h.branches("BYE")] == [Target("WS", "192.0.2.40", 41000)]


def test_a_tampered_flow_token_is_403(ob: Outbound) -> None:
    rr = call_bob(ob)
    forged = [value.replace(";ft=", ";ft=AAAA") for value in reversed(rr)]
    stx = ob.h.send(in_dialog("BYE", forged, WS_CONTACT))
    assert (stx.last_response.status, stx.last_response.reason) == (403, "Invalid flow token")  # type: ignore[union-attr]
    assert ob.h.branches("BYE") == []


def test_an_in_dialog_request_for_a_closed_flow_is_430_flow_failed(ob: Outbound) -> None:
    rr = call_bob(ob)
    ob.open.clear()  # Bob's WebSocket closed
    stx = ob.h.send(in_dialog("BYE", list(reversed(rr)), WS_CONTACT))
    assert (stx.last_response.status, stx.last_response.reason) == (430, "Flow Failed")  # type: ignore[union-attr]


# -- initial requests: one flow per instance, the next flow when one fails (RFC 5626 §7) ----------------

SECOND = "sip:bob@second.invalid;transport=ws"
SECOND_FLOW = Target("WS", "192.0.2.30", 53999)


def two_flows(ob: Outbound) -> None:
    """Bob's one instance, registered on two flows (reg-id 1 more recently than reg-id 2)."""
    ob.h.register(ws_binding(refreshed_at=20.0), ws_binding(SECOND, 53999, reg_id=2, refreshed_at=10.0))
    ob.open.add(SECOND_FLOW)


def test_an_instance_with_two_flows_is_sent_one_request_on_its_latest_flow(ob: Outbound) -> None:
    two_flows(ob)
    ob.h.send(make_request())
    assert [c.target for c in ob.h.branches()] == [BOB_FLOW]


def test_a_closed_first_flow_drops_its_binding_and_the_next_flow_is_tried(ob: Outbound) -> None:
    two_flows(ob)
    ob.open.discard(BOB_FLOW)
    ob.h.send(make_request())
    assert [c.target for c in ob.h.branches()] == [SECOND_FLOW]
    assert [t.contact for t in ob.failed] == [WS_CONTACT]
    assert [b.contact for b in ob.h.store.lookup("sip:bob@example.test")] == [SECOND]


def test_two_flows_under_one_contact_uri_fail_over_and_each_request_uri_is_the_contact(ob: Outbound) -> None:
    # the registrar keeps a second flow registered with the same Contact URI under "URI reg-id=2"
    ob.h.register(
        ws_binding(refreshed_at=20.0), ws_binding(flow_key(WS_CONTACT, 2), 53999, reg_id=2, refreshed_at=10.0)
    )
    ob.open.add(SECOND_FLOW)
    ob.open.discard(BOB_FLOW)
    ob.h.send(make_request())
    [client] = ob.h.branches()
    assert client.target == SECOND_FLOW
    assert client.request.uri_text == WS_CONTACT
    assert [b.contact for b in ob.h.store.lookup("sip:bob@example.test")] == [f"{WS_CONTACT} reg-id=2"]


def test_a_transport_error_on_the_flow_moves_to_the_next_flow(ob: Outbound) -> None:
    two_flows(ob)
    ob.h.send(make_request())
    [first] = ob.h.branches()
    first.owner.transport_failed(first, "no WS connection from 192.0.2.30:53211")
    assert [c.target for c in ob.h.branches()] == [BOB_FLOW, SECOND_FLOW]


def test_a_430_from_beyond_the_flow_moves_to_the_next_flow_and_is_not_the_answer(ob: Outbound) -> None:
    two_flows(ob)
    stx = ob.h.send(make_request())
    [first] = ob.h.branches()
    ob.h.reply(first, 430, reason="Flow Failed")
    second = ob.h.branches()[1]
    assert second.target == SECOND_FLOW
    ob.h.reply(second, 200)
    assert stx.statuses[-1] == 200


def test_every_flow_gone_is_480_at_once_and_no_timer_is_left_waiting(ob: Outbound) -> None:
    two_flows(ob)
    ob.open.clear()
    stx = ob.h.send(make_request())
    assert ob.h.branches() == []
    assert (stx.last_response.status, stx.last_response.reason) == (480, "Flow to the phone is gone")  # type: ignore[union-attr]
    assert ob.h.store.lookup("sip:bob@example.test") == []
    assert ob.h.clock.getDelayedCalls() == []
    [warning] = [kw for level, _, kw in ob.h.log.events if level == "warn"]
    assert warning["contact"] == SECOND and warning["transport"] == "WS"


def test_without_flow_tokens_nothing_changes_for_plain_udp_phones(ob: Outbound) -> None:
    ob.h.register(binding())
    ob.h.send(make_request(), ALICE)
    assert all(";ft=" not in value for value in record_routes(ob))


def test_an_in_dialog_request_whose_flow_fails_while_sending_is_430(ob: Outbound) -> None:
    rr = call_bob(ob)
    ob.h.tx.sent.clear()
    stx = ob.h.send(in_dialog("BYE", list(reversed(rr)), WS_CONTACT))
    [client] = ob.h.branches("BYE")
    client.owner.transport_failed(client, "no WS connection from 192.0.2.30:53211")
    assert (stx.last_response.status, stx.last_response.reason) == (430, "Flow Failed")  # type: ignore[union-attr]


def test_routing_explain_says_a_gone_flow_is_not_reachable(ob: Outbound) -> None:
    ob.h.register(ws_binding())
    ob.open.clear()
    explained = ob.h.proxy.explain("sip:bob@example.test")
    text = repr(explained)
    assert "is gone (RFC 5626): not reachable until it registers" in text, text
