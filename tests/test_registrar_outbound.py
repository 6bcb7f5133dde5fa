"""Tests for the registrar's RFC 5626 outbound part: flow-bound bindings, Require/Flow-Timer, lost flows."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from sipproxy.location import BindingEvent, LocationStore
from sipproxy.message import Response, parse_message
from sipproxy.net import Source
from sipproxy.registrar import Registrar, RegistrarSettings

try:
    from tests.messages import make_request, parse_request
except ImportError:  # pragma: no cover
    from messages import make_request, parse_request  # type: ignore[no-redef]

ALICE = "sip:alice@example.test"
UUID = "<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"
WS_CONTACT = "sip:alice@df7jal23ls0d.invalid;transport=ws"
WS = Source("WS", "192.0.2.7", 53211)
SETTINGS = RegistrarSettings(domains=frozenset({"example.test"}))


def register(contact: str, *, supported: str | None = "path, outbound", call_id: str = "c1", cseq: int = 1):  # type: ignore[no-untyped-def]
    extra = [f"Contact: {contact}", "Expires: 600"]
    if supported is not None:
        extra.append(f"Supported: {supported}")
    return parse_request(
        make_request(
            "REGISTER",
            "sip:example.test",
            via="SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bKws1",
            from_=f"<{ALICE}>;tag=1",
            to=f"<{ALICE}>",
            call_id=call_id,
            cseq=f"{cseq} REGISTER",
            extra=extra,
        )
    )


def jssip(contact: str = WS_CONTACT, reg_id: int = 1) -> str:
    return f'<{contact}>;reg-id={reg_id};+sip.instance="{UUID}"'


def wire(response: Response) -> Response:
    parsed = parse_message(response.to_bytes())
    assert isinstance(parsed, Response)
    return parsed


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(1_000_000)
    return clock


@pytest.fixture
def store(clock: Clock) -> LocationStore:
    return LocationStore(clock)


def test_a_jssip_registration_is_flow_bound_and_its_200_says_require_outbound_and_flow_timer(
    store: LocationStore, clock: Clock
) -> None:
    response = wire(Registrar(store, clock, SETTINGS).handle(register(jssip()), WS))
    assert response.status == 200
    assert response.get("require") == "outbound"
    assert response.get("flow-timer") == "120"
    assert "outbound" in (response.get("supported") or "")
    [binding] = store.lookup(ALICE)
    assert binding.flow_bound
    assert (binding.transport, binding.source_host, binding.source_port) == ("WS", "192.0.2.7", 53211)


def test_outbound_over_udp_asks_for_keepalives_within_a_nat_mapping(store: LocationStore, clock: Clock) -> None:
    contact = jssip("sip:alice@10.0.0.5:5060")
    response = wire(Registrar(store, clock, SETTINGS).handle(register(contact), Source("UDP", "203.0.113.9", 40000)))
    assert (response.get("require"), response.get("flow-timer")) == ("outbound", "29")
    assert store.lookup(ALICE)[0].flow_bound


@pytest.mark.parametrize(
    ("contact", "supported"),
    [
        (jssip(), None),  # the phone did not say it supports outbound
        (f'<{WS_CONTACT}>;+sip.instance="{UUID}"', "outbound"),  # no reg-id
        (f"<{WS_CONTACT}>;reg-id=1", "outbound"),  # no instance
    ],
)
def test_without_every_part_of_outbound_the_200_requires_nothing(
    store: LocationStore, clock: Clock, contact: str, supported: str | None
) -> None:
    response = wire(Registrar(store, clock, SETTINGS).handle(register(contact, supported=supported), WS))
    assert response.status == 200
    assert not response.has("require") and not response.has("flow-timer")


def test_require_outbound_in_the_register_is_supported(store: LocationStore, clock: Clock) -> None:
    request = register(jssip())
    request.add("Require", "outbound")
    assert Registrar(store, clock, SETTINGS).handle(request, WS).status == 200


def test_a_new_register_for_the_same_instance_and_reg_id_replaces_the_flow(store: LocationStore, clock: Clock) -> None:
    registrar = Registrar(store, clock, SETTINGS)
    registrar.handle(register(jssip()), WS)
    # the browser reconnects: a new WebSocket, a new random .invalid Contact, a new Call-ID
    other = "sip:alice@k2k2k2k2.invalid;transport=ws"
    registrar.handle(register(jssip(other), call_id="c2"), Source("WS", "192.0.2.7", 53999))
    [binding] = store.lookup(ALICE)
    assert (binding.contact, binding.source_port) == (other, 53999)


def test_two_flows_of_one_instance_with_the_same_contact_uri_are_two_bindings(
    store: LocationStore, clock: Clock
) -> None:
    # RFC 5626 §6 knows an outbound registration by (instance, reg-id): a phone on two flows (two edge
    # proxies, two nodes) registers the same Contact URI on both, as the RFC's own example does.
    registrar = Registrar(store, clock, SETTINGS)
    tcp = "sip:alice@192.0.2.7:5070;transport=tcp"
    second = Source("TCP", "192.0.2.7", 40002)
    assert registrar.handle(register(jssip(tcp, reg_id=1)), Source("TCP", "192.0.2.7", 40001)).status == 200
    clock.advance(1)
    response = wire(registrar.handle(register(jssip(tcp, reg_id=2), call_id="c2"), second))
    assert response.status == 200
    assert response.get_all("contact") == [f"<{tcp}>;expires=600", f"<{tcp}>;expires=599"]  # the URI, twice
    flows = {b.reg_id: b for b in store.lookup(ALICE)}
    assert {r: (b.contact_uri, b.source_port) for r, b in flows.items()} == {1: (tcp, 40001), 2: (tcp, 40002)}
    assert flows[1].contact == tcp and flows[2].contact == f"{tcp} reg-id=2"  # the page tells the flows apart
    # each flow's refresh updates its own binding; the other's unregistration leaves it
    clock.advance(10)
    registrar.handle(register(jssip(tcp, reg_id=2), call_id="c2", cseq=2), second)
    assert {b.reg_id: b.refreshed_at for b in store.lookup(ALICE)} == {1: flows[1].refreshed_at, 2: clock.seconds()}
    request = register(jssip(tcp, reg_id=1) + ";expires=0", cseq=2)
    assert registrar.handle(request, Source("TCP", "192.0.2.7", 40001)).status == 200
    [left] = store.lookup(ALICE)
    assert (left.reg_id, left.contact_uri, left.source_port) == (2, tcp, 40002)
    # with the first flow gone, the second keeps its key; a new first flow takes the bare URI again
    registrar.handle(register(jssip(tcp, reg_id=1), call_id="c3"), Source("TCP", "192.0.2.7", 40003))
    assert {b.contact for b in store.lookup(ALICE)} == {tcp, f"{tcp} reg-id=2"}


def test_a_lost_flow_removes_its_flow_bound_bindings_with_reason_flow_lost(store: LocationStore, clock: Clock) -> None:
    registrar = Registrar(store, clock, SETTINGS)
    registrar.handle(register(jssip()), WS)
    plain = "sip:alice@192.0.2.7:5070;transport=tcp"
    registrar.handle(register(f"<{plain}>", call_id="c3"), Source("TCP", "192.0.2.7", 40001))
    events: list[BindingEvent] = []
    store.subscribe(events.append)
    assert registrar.flow_lost([(ALICE, WS_CONTACT), (ALICE, plain)]) == 1
    assert [(e.kind, e.binding.contact, e.reason) for e in events] == [("removed", WS_CONTACT, "flow-lost")]
    # a plain TCP phone stays: its Contact may still answer (RFC 3261 §18.2.2)
    assert [b.contact for b in store.lookup(ALICE)] == [plain]


def test_keep_flow_bindings_keeps_them_until_they_expire(store: LocationStore, clock: Clock) -> None:
    settings = RegistrarSettings(domains=frozenset({"example.test"}), keep_flow_bindings=True)
    registrar = Registrar(store, clock, settings)
    registrar.handle(register(jssip()), WS)
    assert registrar.flow_lost([(ALICE, WS_CONTACT)]) == 0
    assert registrar.drop_lost_flows() == 0
    assert len(store.lookup(ALICE)) == 1


def test_after_a_restart_bindings_on_connections_are_dropped_but_udp_flows_stay(
    store: LocationStore, clock: Clock
) -> None:
    registrar = Registrar(store, clock, SETTINGS)
    registrar.handle(register(jssip()), WS)
    udp = "sip:bob@10.0.0.5:5060"
    bob = parse_request(
        make_request(
            "REGISTER",
            "sip:example.test",
            via="SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKu1",
            from_="<sip:bob@example.test>;tag=1",
            to="<sip:bob@example.test>",
            call_id="b1",
            cseq="1 REGISTER",
            extra=[f'Contact: <{udp}>;reg-id=1;+sip.instance="{UUID}"', "Supported: outbound"],
        )
    )
    registrar.handle(bob, Source("UDP", "203.0.113.9", 40000))
    assert registrar.drop_lost_flows() == 1
    assert store.lookup(ALICE) == []
    assert [b.contact for b in store.lookup("sip:bob@example.test")] == [udp]
