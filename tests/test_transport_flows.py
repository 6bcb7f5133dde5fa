"""Tests for sipproxy.transport.flows and the transport's ``flow_closed``: a closed connection names its bindings."""

from __future__ import annotations

from twisted.internet.task import Clock

from sipproxy.location import Binding, BindingEvent, LocationStore
from sipproxy.registrar import Registrar, RegistrarSettings
from sipproxy.transport.flows import RegisteredFlows

try:
    from tests.test_transport_stream import connect, make_layer
except ImportError:  # pragma: no cover
    from test_transport_stream import connect, make_layer  # type: ignore[no-redef]


def ws(contact: str, port: int, **kw: object) -> Binding:
    return Binding(
        aor="sip:alice@example.test",
        contact=contact,
        call_id=f"c-{contact}",
        cseq=1,
        expires_at=10_000.0,
        transport=kw.pop("transport", "TCP"),  # type: ignore[arg-type]
        source_host="192.0.2.9",
        source_port=port,
        instance="<urn:uuid:1>",
        reg_id=1,
        **kw,  # type: ignore[arg-type]
    )


def test_bindings_on_names_every_binding_of_a_connection_and_forgets_removed_ones() -> None:
    flows = RegisteredFlows()
    a, b, c = ws("sip:a@x", 40400), ws("sip:b@x", 40400), ws("sip:c@x", 40401)
    for binding in (a, b, c):
        flows.changed(BindingEvent("added", binding, "registered"))
    assert flows.bindings_on("tcp", "192.0.2.9", 40400) == [(a.aor, "sip:a@x"), (b.aor, "sip:b@x")]
    flows.changed(BindingEvent("removed", a, "unregistered"))
    assert flows.bindings_on("TCP", "192.0.2.9", 40400) == [(b.aor, "sip:b@x")]
    assert flows.bindings_on("TCP", "192.0.2.9", 1) == []


def test_a_closed_connection_drops_its_outbound_binding_with_reason_flow_lost() -> None:
    transport, clock = make_layer()
    store = LocationStore(Clock())
    flows = RegisteredFlows()
    store.subscribe(flows.changed)
    registrar = Registrar(store, Clock(), RegistrarSettings(domains=frozenset({"example.test"})))
    transport.flow_closed = lambda name, host, port: registrar.flow_lost(flows.bindings_on(name, host, port)) and None
    events: list[BindingEvent] = []
    store.subscribe(events.append)
    proto, wire = connect(transport, clock)
    store.update("sip:alice@example.test", put=[ws("sip:alice@192.0.2.9:5060;transport=tcp;ob", 40400)])
    proto.connectionLost(None)
    assert store.lookup("sip:alice@example.test") == []
    assert [(e.kind, e.reason) for e in events] == [("added", "registered"), ("removed", "flow-lost")]


def test_the_page_shows_a_connections_flow_open_or_lost_and_nothing_for_udp() -> None:
    from sipproxy.net import Target
    from sipproxy.transport.flows import flow_state
    from sipproxy.web.render import binding_json

    open_flows = {Target("WS", "192.0.2.9", 40400)}
    state = flow_state(lambda target: target in open_flows)
    up, gone = ws("sip:a@x.invalid", 40400, transport="WS"), ws("sip:b@x.invalid", 40401, transport="WS")
    udp = ws("sip:c@10.0.0.5", 5060, transport="UDP")
    shown = [binding_json(b, 0.0, state) for b in (up, gone, udp)]
    assert [(s["transport"], s["flow"]) for s in shown] == [("WS", "open"), ("WS", "lost"), ("UDP", None)]
