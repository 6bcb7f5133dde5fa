"""Stream connections under attack: memory freed on close, bounded buffering, deadlines, eviction, half-close."""

from __future__ import annotations

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
