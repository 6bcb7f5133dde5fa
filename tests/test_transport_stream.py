"""Stream connections under attack: memory freed on close, bounded buffering, deadlines, eviction, half-close."""

from __future__ import annotations

import dataclasses
import gc
import weakref
from collections.abc import Iterator

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from sipproxy.message import parse_message
from sipproxy.metrics import Metrics
from sipproxy.stack import Domains, SipStack
from sipproxy.transaction import TransactionLayer, TransactionSink
from sipproxy.transport import SipStreamFactory, StreamSender, TransportLayer, TransportLimits

try:
    from tests.fakes import Connector
except ImportError:  # pragma: no cover
    from fakes import Connector  # type: ignore[no-redef]


def make_layer(limits: TransportLimits = TransportLimits(), **kw: object) -> tuple[TransportLayer, Clock]:
    clock = Clock()
    metrics = Metrics()
    transport = TransportLayer(metrics=metrics, limits=limits, **kw)  # type: ignore[arg-type]
    transport.register(StreamSender(transport, "TCP", Connector()))
    stack = SipStack(Domains(["example.test", "192.0.2.1"]), metrics)
    transport.sink = TransactionSink(TransactionLayer(clock, transport, stack), metrics)
    return transport, clock


def connect(transport: TransportLayer, clock: Clock, host: str = "192.0.2.9", port: int = 40400):  # type: ignore[no-untyped-def]
    """An accepted connection, or ``None`` when the factory refused it."""
    address = (IPv6Address if ":" in host else IPv4Address)("TCP", host, port)
    proto = SipStreamFactory(transport, clock).buildProtocol(address)
    if proto is None:
        return None, None
    wire = StringTransport(peerAddress=address)
    proto.makeConnection(wire)
    return proto, wire


def options(branch: str, host: str = "192.0.2.9") -> bytes:
    return (
        "OPTIONS sip:example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/TCP {host}:5060;branch=z9hG4bK-{branch}\r\n"
        "From: <sip:alice@example.test>;tag=a1\r\n"
        "To: <sip:example.test>\r\n"
        f"Call-ID: {branch}@192.0.2.9\r\n"
        "CSeq: 7 OPTIONS\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def large_head(length: int) -> bytes:
    return options("big").replace(b"Content-Length: 0", b"Content-Length: %d" % length).replace(b"OPTIONS", b"MESSAGE")


@pytest.fixture
def no_cycle_collector() -> Iterator[None]:
    """What ``sipproxy.gctune`` does for 10 minutes at a time: only reference counting frees memory."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# -- item 2: closed connections keep no memory ------------------------------------------


def test_closed_connections_with_partial_messages_are_freed_by_reference_counting(no_cycle_collector) -> None:  # type: ignore[no-untyped-def]
    transport, clock = make_layer()
    alive: list[weakref.ref[object]] = []
    for port in range(20):
        proto, wire = connect(transport, clock, port=10000 + port)
        proto.dataReceived(options(f"m{port}"))  # a whole request: a transaction names the connection
        assert parse_message(wire.value()).status == 200  # type: ignore[union-attr]
        proto.dataReceived(large_head(1 << 20) + b"x" * 200_000)  # then most of a large one
        assert proto.framer.buffered > 200_000
        proto.connectionLost(None)
        alive.append(weakref.ref(proto))
        alive.append(weakref.ref(wire))
        del proto, wire
    clock.advance(64)  # the transactions end (Timer J/K)
    assert transport.connections == {}
    assert [ref for ref in alive if ref() is not None] == []


def test_a_closed_connection_a_transaction_still_holds_has_let_go_of_its_buffer() -> None:
    transport, clock = make_layer()
    proto, _ = connect(transport, clock)
    proto.dataReceived(options("held") + large_head(1 << 20) + b"x" * 100_000)
    proto.connectionLost(None)
    assert proto.framer.buffered == 0 and proto.source is None


def test_a_stream_buffers_no_more_than_the_message_size_limit() -> None:
    """A header block that says more than ``max_message`` gets 513 at once, before its body is buffered."""
    transport, clock = make_layer(TransportLimits(max_message=65535))
    proto, wire = connect(transport, clock)
    proto.dataReceived(large_head(1 << 20) + b"x" * 1000)
    response = parse_message(wire.value())
    assert (response.status, response.reason) == (513, "Message Too Large")  # type: ignore[union-attr]
    assert wire.disconnecting

    proto, wire = connect(transport, clock, port=40401)
    for _ in range(100):  # a header block that never ends
        proto.dataReceived(b"X-Junk: " + b"a" * 1000 + b"\r\n")
        if wire.disconnecting:
            break
    assert wire.disconnecting and proto.framer.buffered <= 66000


def test_a_whole_oversized_message_still_reaches_the_guard_and_the_connection_stays() -> None:
    transport, clock = make_layer(TransportLimits(max_message=1500))
    proto, wire = connect(transport, clock)
    big = options("whole").replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 70\r\nSubject: " + b"x" * 2000 + b"\r\n")
    proto.dataReceived(big)  # arrived whole: the transport passes it on (the guard answers 513 in the server)
    assert parse_message(wire.value()).status == 200  # type: ignore[union-attr]
    assert not wire.disconnecting


# -- item 3: slow and idle connections ----------------------------------------------------


def test_a_message_must_arrive_whole_within_the_deadline_of_its_first_byte() -> None:
    transport, clock = make_layer(TransportLimits(message_timeout=30, idle_timeout=600))
    proto, wire = connect(transport, clock)
    message = options("slow")
    for i in range(40):  # one byte a second: never idle, never done
        proto.dataReceived(message[i : i + 1])
        clock.advance(1)
        if wire.disconnecting:
            break
    assert wire.disconnecting and i == 29
    assert 'sip_tcp_connections_closed_total{reason="timeout"} 1.0' in metrics_text(transport)


def test_each_message_gets_its_own_deadline_and_a_quiet_connection_only_the_idle_timeout() -> None:
    transport, clock = make_layer(TransportLimits(message_timeout=30, idle_timeout=600))
    proto, wire = connect(transport, clock)
    for n in range(5):
        first, second = options(f"d{n}"), options(f"e{n}")
        proto.dataReceived(first + second[:20])  # the second message starts now
        clock.advance(20)
        proto.dataReceived(second[20:])
        clock.advance(20)  # 40 s since the first one's first byte, 20 s since the second's
    assert not wire.disconnecting
    assert wire.value().count(b"SIP/2.0 200 OK") == 10
    clock.advance(500)  # nothing buffered: only the idle timeout applies
    assert not wire.disconnecting
    clock.advance(100)
    assert wire.disconnecting


def metrics_text(transport: TransportLayer) -> str:
    from prometheus_client import generate_latest

    return generate_latest(transport.metrics.registry).decode()


def test_at_the_per_address_limit_the_longest_idle_connection_without_a_flow_makes_room() -> None:
    transport, clock = make_layer(TransportLimits(max_connections_per_address=3))
    flows = {("TCP", "192.0.2.9", 1)}
    transport.holds_flow = lambda t, host, port: (t, host, port) in flows
    protos = {}
    for port in (1, 2, 3):
        protos[port] = connect(transport, clock, port=port)
        clock.advance(10)
    protos[3][0].dataReceived(b"\r\n\r\n")  # 3 spoke last; 1 is the oldest but holds a registered flow
    newcomer, _ = connect(transport, clock, port=4)
    assert newcomer is not None
    assert protos[2][1].disconnecting and not protos[1][1].disconnecting and not protos[3][1].disconnecting
    assert sorted(port for _, _, port in transport.connections) == [1, 3, 4]
    assert 'sip_tcp_connections_closed_total{reason="evicted"} 1.0' in metrics_text(transport)
    assert "sip_tcp_connections 3.0" in metrics_text(transport)
    clock.advance(1)
    connect(transport, clock, port=5)  # then 3, idle longest now
    assert protos[3][1].disconnecting
    flows.update({("TCP", "192.0.2.9", 4), ("TCP", "192.0.2.9", 5)})
    assert connect(transport, clock, port=6) == (None, None)  # all three hold flows: refused
    assert 'sip_blocked_requests_total{reason="tcp-connections"} 1.0' in metrics_text(transport)


def test_at_the_total_limit_another_address_makes_room_and_health_says_full_only_when_none_can() -> None:
    transport, clock = make_layer(TransportLimits(max_connections=4, max_connections_per_address=64))
    flows: set[tuple[str, str, int]] = set()
    transport.holds_flow = lambda t, host, port: (t, host, port) in flows
    idle = [connect(transport, clock, host="192.0.2.66", port=p) for p in (1, 2, 3, 4)]
    clock.advance(5)
    phone, _ = connect(transport, clock, host="192.0.2.7", port=5060)
    assert phone is not None and idle[0][1].disconnecting and not transport.full
    flows.add(("TCP", "192.0.2.7", 5060))
    for port in (1, 2, 3):
        connect(transport, clock, host="192.0.2.8", port=port)
        flows.add(("TCP", "192.0.2.8", port))
    assert transport.full
    assert connect(transport, clock, host="192.0.2.99", port=1) == (None, None)


def test_the_per_address_limit_counts_an_ipv6_slash_64_as_one_address() -> None:
    transport, clock = make_layer(TransportLimits(max_connections_per_address=2))
    transport.holds_flow = lambda t, host, port: True
    assert connect(transport, clock, host="2001:db8:1:2::1", port=1)[0] is not None
    assert connect(transport, clock, host="2001:db8:1:2::ffff:1", port=1)[0] is not None
    assert connect(transport, clock, host="2001:db8:1:2:abcd::9", port=1) == (None, None)  # same /64
    assert connect(transport, clock, host="2001:db8:1:3::1", port=1)[0] is not None  # the next /64


def test_registered_flows_follow_the_location_service() -> None:
    from sipproxy.location import Binding, BindingEvent
    from sipproxy.transport.flows import RegisteredFlows

    flows = RegisteredFlows()
    tcp = Binding(
        aor="sip:alice@example.test",
        contact="sip:alice@192.0.2.9:5060;transport=tcp",
        call_id="c1",
        cseq=1,
        expires_at=100.0,
        transport="TCP",
        source_host="192.0.2.9",
        source_port=40400,
    )
    flows.changed(BindingEvent("added", tcp, "registered"))
    assert flows("TCP", "192.0.2.9", 40400) and not flows("TCP", "192.0.2.9", 40401)
    moved = dataclasses.replace(tcp, source_port=40401)
    flows.changed(BindingEvent("refreshed", moved, "replaced"))  # the phone reconnected
    assert flows("TCP", "192.0.2.9", 40401) and not flows("TCP", "192.0.2.9", 40400)
    flows.changed(BindingEvent("expired", moved, "expired"))
    assert not flows("TCP", "192.0.2.9", 40401)


# -- item 9: half-close ---------------------------------------------------------------------


class HeldSink:
    """A sink that answers later: what the registrar does while its commit is made durable."""

    def __init__(self) -> None:
        self.held: list[tuple[object, object]] = []

    def message_received(self, message, source, data) -> None:  # type: ignore[no-untyped-def]
        self.held.append((message, source))

    def unparseable(self, error, source, size) -> bool:  # type: ignore[no-untyped-def]
        return True


def test_a_half_closed_connection_gets_its_answers_then_closes() -> None:
    from twisted.internet.interfaces import IHalfCloseableProtocol

    from sipproxy.message import make_response

    transport, clock = make_layer()
    sink = HeldSink()
    transport.sink = sink  # type: ignore[assignment]
    proto, wire = connect(transport, clock)
    assert IHalfCloseableProtocol.providedBy(proto)  # else Twisted closes it at the peer's shutdown(SHUT_WR)
    proto.dataReceived(options("h1") + options("h2"))
    proto.readConnectionLost()
    assert not wire.disconnecting and proto.alive
    for n, (request, source) in enumerate(sink.held):
        transport.send_response(make_response(request, 100, "Trying"), source)  # type: ignore[arg-type]
        assert not wire.disconnecting
        transport.send_response(make_response(request, 200, "OK"), source)  # type: ignore[arg-type]
        assert wire.disconnecting == (n == 1)  # closed after the last final response
    assert wire.value().count(b"SIP/2.0 200 OK") == 2


def test_a_half_closed_connection_with_nothing_to_answer_closes_and_one_never_answered_lingers_32_s() -> None:
    transport, clock = make_layer()
    transport.sink = HeldSink()  # type: ignore[assignment]
    proto, wire = connect(transport, clock)
    proto.dataReceived(b"\r\n\r\n")
    proto.readConnectionLost()
    assert wire.disconnecting

    proto, wire = connect(transport, clock, port=40401)
    proto.dataReceived(options("never"))
    proto.readConnectionLost()
    clock.advance(31)
    assert not wire.disconnecting
    clock.advance(2)
    assert wire.disconnecting
