"""The transport layer against fake sockets: UDP datagrams, TCP streams, §18.2 and RFC 3581."""

from __future__ import annotations

import errno

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs

from sipproxy.message import parse_message
from sipproxy.metrics import Metrics
from sipproxy.stack import Domains, SipStack
from sipproxy.transaction import TransactionLayer, TransactionSink
from sipproxy.transport import (
    DatagramSender,
    SipDatagramProtocol,
    SipStreamFactory,
    StreamSender,
    TransportLayer,
    TransportLimits,
)
from sipproxy.transport.udp import write_datagram

try:
    from tests.fakes import Connector, FakeUDP
    from tests.messages import make_request
except ImportError:  # pragma: no cover
    from fakes import Connector, FakeUDP  # type: ignore[no-redef]
    from messages import make_request  # type: ignore[no-redef]


def make_stack(limits: TransportLimits = TransportLimits()) -> tuple[TransportLayer, FakeUDP, Clock, Connector]:
    clock = Clock()
    connector = Connector()
    metrics = Metrics()
    transport = TransportLayer(metrics=metrics, limits=limits, clock=clock)
    transport.register(DatagramSender(transport))
    transport.register(StreamSender(transport, "TCP", connector))
    stack = SipStack(Domains(["example.test", "192.0.2.1"]), metrics)
    transport.sink = TransactionSink(TransactionLayer(clock, transport, stack), metrics)
    udp = FakeUDP()
    proto = SipDatagramProtocol(transport, 4)
    proto.transport = udp  # type: ignore[assignment]
    proto.startProtocol()
    return transport, udp, clock, connector


def options(
    via: str = "SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK-o1",
    extra: tuple[str, ...] = (),
    uri: str = "sip:example.test",
) -> bytes:
    """An OPTIONS to the server, Max-Forwards after CSeq as some phones write it."""
    return make_request(
        "OPTIONS",
        uri,
        via=via,
        max_forwards=None,
        from_="<sip:alice@example.test>;tag=a1",
        to="<sip:example.test>",
        call_id="c1@192.0.2.7",
        cseq="7 OPTIONS",
        extra=("Max-Forwards: 70", *extra),
    )


def datagram(transport: TransportLayer, data: bytes, addr: tuple[str, int]) -> None:
    proto = SipDatagramProtocol(transport, 4)
    proto.datagramReceived(data, addr)


def test_a_stopped_udp_port_is_no_longer_sent_from() -> None:
    """At shutdown a response for a stopped port said "no IPv4 UDP socket", not an AttributeError per message."""
    transport = TransportLayer(metrics=Metrics())
    proto = SipDatagramProtocol(transport, 4)
    proto.makeConnection(FakeUDP())  # type: ignore[arg-type]  # doStart: startProtocol
    assert 4 in transport.udp
    proto.doStop()  # what Twisted's Port.connectionLost calls; it sets proto.transport to None first
    assert 4 not in transport.udp


def test_options_to_server_answered_200_with_capabilities() -> None:
    transport, udp, _, _ = make_stack()
    datagram(transport, options(), ("192.0.2.7", 5062))
    [(data, addr)] = udp.written
    response = parse_message(data)
    assert addr == ("192.0.2.7", 5062)
    assert response.status == 200  # type: ignore[union-attr]
    assert "REGISTER" in (response.get("allow") or "")
    assert response.get("supported") == "outbound, path"
    assert response.to.tag is not None


def test_rport_and_received_filled_and_response_sent_there() -> None:
    """RFC 3581: a client behind NAT asks for rport; the answer goes to the packet's source."""
    transport, udp, _, _ = make_stack()
    datagram(transport, options(via="SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bK-n1;rport"), ("192.0.2.99", 40000))
    [(data, addr)] = udp.written
    assert addr == ("192.0.2.99", 40000)
    via = parse_message(data).top_via
    assert via.received == "192.0.2.99"
    assert via.rport == 40000


def test_received_without_rport_answers_sent_by_port() -> None:
    """§18.2.2: received host, Via port."""
    transport, udp, _, _ = make_stack()
    datagram(transport, options(via="SIP/2.0/UDP host.example.test:5070;branch=z9hG4bK-n2"), ("192.0.2.8", 40001))
    [(data, addr)] = udp.written
    assert addr == ("192.0.2.8", 5070)
    assert parse_message(data).top_via.received == "192.0.2.8"


def test_retransmitted_request_gets_same_response_once_handled() -> None:
    transport, udp, _, _ = make_stack()
    datagram(transport, options(), ("192.0.2.7", 5062))
    datagram(transport, options(), ("192.0.2.7", 5062))
    assert len(udp.written) == 2
    assert udp.written[0] == udp.written[1]


def test_broken_header_gets_400_naming_the_problem() -> None:
    transport, udp, _, _ = make_stack()
    with capturedLogs() as events:
        datagram(transport, options().replace(b"Max-Forwards: 70", b"Max-Forwards: x"), ("192.0.2.7", 5062))
    [(data, addr)] = udp.written
    response = parse_message(data)
    assert response.status == 400  # type: ignore[union-attr]
    assert response.reason == "Bad Max-Forwards"  # type: ignore[union-attr]
    assert any(e["log_level"] == LogLevel.warn and e.get("status") == 400 for e in events)


def test_bad_content_length_gets_400() -> None:
    transport, udp, _, _ = make_stack()
    datagram(transport, options().replace(b"Content-Length: 0", b"Content-Length: 99"), ("192.0.2.7", 5062))
    [(data, _)] = udp.written
    assert parse_message(data).reason.startswith("Bad Content-Length")  # type: ignore[union-attr]


def test_garbage_is_dropped_and_logged_with_source() -> None:
    transport, udp, _, _ = make_stack()
    with capturedLogs() as events:
        datagram(transport, b"\x00\xffGET / HTTP/1.1\r\n\r\n", ("192.0.2.66", 1234))
    assert udp.written == []
    warnings = [e for e in events if e["log_level"] == LogLevel.warn]
    assert warnings and warnings[0]["host"] == "192.0.2.66"


def test_malformed_response_is_dropped() -> None:
    transport, udp, _, _ = make_stack()
    datagram(transport, b"SIP/2.0 200 OK\r\nVia: nonsense\r\n\r\n", ("192.0.2.66", 1234))
    assert udp.written == []


def test_ack_with_parse_error_is_never_answered() -> None:
    transport, udp, _, _ = make_stack()
    ack = options().replace(b"OPTIONS sip", b"ACK sip").replace(b"7 OPTIONS", b"7 ACK") + b""
    datagram(transport, ack.replace(b"Max-Forwards: 70", b"Max-Forwards: many"), ("192.0.2.7", 5062))
    assert udp.written == []


def test_unknown_method_to_server_is_not_silence() -> None:
    transport, udp, _, _ = make_stack()
    data = options().replace(b"OPTIONS sip", b"FOO sip").replace(b"7 OPTIONS", b"7 FOO")
    datagram(transport, data, ("192.0.2.7", 5062))
    [(out, _)] = udp.written
    assert parse_message(out).status >= 400  # type: ignore[union-attr]


def tcp_connection(transport: TransportLayer, clock: Clock, peer: tuple[str, int] = ("192.0.2.9", 40400)):  # type: ignore[no-untyped-def]
    factory = SipStreamFactory(transport, clock)
    proto = factory.buildProtocol(IPv4Address("TCP", *peer))
    wire = StringTransport(peerAddress=IPv4Address("TCP", *peer))
    proto.makeConnection(wire)
    return proto, wire


def test_tcp_one_byte_at_a_time_and_two_messages_in_one_write() -> None:
    transport, _, clock, _ = make_stack()
    proto, wire = tcp_connection(transport, clock)
    tcp_options = options(via="SIP/2.0/TCP 192.0.2.9:5060;branch=z9hG4bK-t1")
    for byte in tcp_options:
        proto.dataReceived(bytes([byte]))
    first = wire.value()
    assert parse_message(first).status == 200  # type: ignore[union-attr]
    wire.clear()
    second = options(via="SIP/2.0/TCP 192.0.2.9:5060;branch=z9hG4bK-t2")
    third = options(via="SIP/2.0/TCP 192.0.2.9:5060;branch=z9hG4bK-t3")
    proto.dataReceived(second + third)
    assert wire.value().count(b"SIP/2.0 200 OK") == 2


def test_tcp_keepalive_ping_gets_pong() -> None:
    transport, _, clock, _ = make_stack()
    proto, wire = tcp_connection(transport, clock)
    proto.dataReceived(b"\r\n\r\n")
    assert wire.value() == b"\r\n"


def test_tcp_missing_content_length_gets_400_and_close() -> None:
    transport, _, clock, _ = make_stack()
    proto, wire = tcp_connection(transport, clock)
    proto.dataReceived(
        options(via="SIP/2.0/TCP 192.0.2.9:5060;branch=z9hG4bK-t4").replace(b"Content-Length: 0\r\n", b"")
    )
    response = parse_message(wire.value())
    assert response.status == 400  # type: ignore[union-attr]
    assert response.reason == "Missing Content-Length"  # type: ignore[union-attr]
    assert wire.disconnecting


def test_tcp_endless_header_is_cut_off() -> None:
    transport, _, clock, _ = make_stack(TransportLimits(max_head=1024))
    proto, wire = tcp_connection(transport, clock)
    for _ in range(100):
        proto.dataReceived(b"X-Junk: " + b"a" * 50 + b"\r\n")
        if wire.disconnecting:
            break
    assert wire.disconnecting
    assert proto.framer.buffered < 4096


def test_tcp_idle_connection_closed() -> None:
    transport, _, clock, _ = make_stack(TransportLimits(idle_timeout=30))
    proto, wire = tcp_connection(transport, clock)
    assert ("TCP", "192.0.2.9", 40400) in transport.connections
    clock.advance(31)
    assert wire.disconnecting


def test_tcp_connection_limit_per_address() -> None:
    """Per address, connections that hold registered flows are kept: the next one is refused."""
    transport, _, clock, _ = make_stack(TransportLimits(max_connections_per_address=2))
    transport.holds_flow = lambda transport, host, port: True
    factory = SipStreamFactory(transport, clock)
    for port in (1, 2):
        tcp_connection(transport, clock, ("192.0.2.9", port))
    assert factory.buildProtocol(IPv4Address("TCP", "192.0.2.9", 3)) is None
    assert factory.buildProtocol(IPv4Address("TCP", "192.0.2.10", 3)) is not None


def test_request_to_peer_reuses_its_inbound_connection() -> None:
    transport, _, clock, connector = make_stack()
    proto, wire = tcp_connection(transport, clock, ("192.0.2.9", 40400))
    from sipproxy.transaction import Target

    errors: list[str] = []
    request = parse_message(options(via="SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK-out1"))
    transport.send_request(request, Target("TCP", "192.0.2.9", 40400), errors.append)  # type: ignore[arg-type]
    assert wire.value().startswith(b"OPTIONS sip:example.test SIP/2.0")
    assert connector.attempts == [] and errors == []


def test_tcp_connect_failure_reaches_the_sender() -> None:
    transport, _, _, connector = make_stack()
    from sipproxy.transaction import Target

    errors: list[str] = []
    request = parse_message(options(via="SIP/2.0/TCP 192.0.2.1:5060;branch=z9hG4bK-out2"))
    transport.send_request(request, Target("TCP", "192.0.2.50", 5060), errors.append)  # type: ignore[arg-type]
    assert connector.attempts == [("192.0.2.50", 5060)]
    transport.connect_failed("TCP", "192.0.2.50", 5060, "Connection refused")
    assert errors and "refused" in errors[0]


def test_invented_methods_are_counted_as_other_in_metrics() -> None:
    """A peer inventing methods must not grow the metrics without bound."""
    transport, _, _, _ = make_stack()
    for name in ("XFOO", "XBAR", "XBAZ"):
        data = options().replace(b"OPTIONS sip", name.encode() + b" sip").replace(b"7 OPTIONS", b"7 " + name.encode())
        datagram(transport, data, ("192.0.2.7", 5062))
    from prometheus_client import generate_latest

    text = generate_latest(transport.metrics.registry).decode()
    assert 'sip_requests_received_total{method="OTHER"} 3.0' in text
    assert "XFOO" not in text


def test_response_resent_on_its_connection_or_where_the_via_says_once_it_closed() -> None:
    """§18.2.2: the connection the request came on; if it has closed, a new one to received/port."""
    transport, _, clock, connector = make_stack()
    proto, wire = tcp_connection(transport, clock, ("192.0.2.9", 40400))
    proto.dataReceived(options(via="SIP/2.0/TCP 192.0.2.9:5070;branch=z9hG4bK-r1"))
    response = parse_message(wire.value())
    assert response.status == 200  # type: ignore[union-attr]
    wire.clear()

    from sipproxy.transaction import Source

    sent = transport.send_response(response, Source("TCP", "192.0.2.9", 40400, proto))  # type: ignore[arg-type]
    assert sent is not None and wire.value() == sent.data
    wire.clear()
    transport.resend_response(sent)
    assert wire.value() == sent.data  # the same bytes, on the same connection
    proto.connectionLost(None)  # type: ignore[arg-type]
    transport.resend_response(sent)
    assert connector.attempts == [("192.0.2.9", 5070)]


# -- transports by name, one connection table --------------------------------------------


def test_a_transport_nobody_registered_fails_the_send_with_its_name() -> None:
    transport, _, _, _ = make_stack()
    from sipproxy.transaction import Target

    errors: list[str] = []
    request = parse_message(options(via="SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK-tls0"))
    transport.send_request(request, Target("TLS", "192.0.2.9", 5061), errors.append)  # type: ignore[arg-type]
    assert errors == ["transport TLS is not supported"]


def test_a_second_stream_transport_is_one_registration_over_the_same_table() -> None:
    """What TLS will be: its own name and connector, the stream protocol and the connection table shared."""
    transport, _, clock, _ = make_stack()
    tls_connector = Connector()
    transport.register(StreamSender(transport, "TLS", tls_connector))
    from sipproxy.transaction import Target

    tcp, tcp_wire = tcp_connection(transport, clock, ("192.0.2.9", 5061))
    factory = SipStreamFactory(transport, clock, "TLS")
    tls = factory.buildProtocol(IPv4Address("TCP", "192.0.2.9", 5062))
    tls_wire = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.9", 5062))
    tls.makeConnection(tls_wire)
    assert tls.source.transport == "TLS"  # type: ignore[union-attr]
    assert transport.has_flow(Target("TCP", "192.0.2.9", 5061))
    assert not transport.has_flow(Target("TLS", "192.0.2.9", 5061))  # same address, other transport
    assert transport.has_flow(Target("TLS", "192.0.2.9", 5062))

    request = parse_message(options(via="SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bK-tls1"))
    transport.send_request(request, Target("TLS", "192.0.2.9", 5062), lambda reason: None)  # type: ignore[arg-type]
    assert tls_wire.value().startswith(b"OPTIONS ") and tcp_wire.value() == b""
    transport.send_request(request, Target("TLS", "192.0.2.50", 5061), lambda reason: None)  # type: ignore[arg-type]
    assert tls_connector.attempts == [("192.0.2.50", 5061)]

    with capturedLogs() as events:
        tls.dataReceived(
            options(via="SIP/2.0/TLS 192.0.2.9:5062;branch=z9hG4bK-t9").replace(b"Content-Length: 0\r\n", b"")
        )
    assert [e["transport"] for e in events if e["log_level"] == LogLevel.warn] == ["TLS"]
    from prometheus_client import generate_latest

    assert 'sip_parse_errors_total{transport="TLS"} 1.0' in generate_latest(transport.metrics.registry).decode()
    tcp.connectionLost(None)  # type: ignore[arg-type]
    assert not transport.has_flow(Target("TCP", "192.0.2.9", 5061))


def test_connection_limits_count_a_peer_as_the_security_limits_do() -> None:
    """One address key for both: IPv4 as is, IPv6 per /64, IPv4-mapped IPv6 (either spelling) as its IPv4."""
    from sipproxy.security.sources import source_key
    from sipproxy.transport.address import address_key

    for host in ("192.0.2.1", "[2001:db8:1:2::7]", "2001:db8:1:2:ffff::1", "::ffff:192.0.2.1", "::ffff:c000:201"):
        assert address_key(host) == source_key(host)
    assert address_key("::ffff:c000:201") == "192.0.2.1"
    assert address_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"


# -- write_datagram: Twisted's udp.Port.write without its per-datagram address checks --------------


class _RecordingSocket:
    def __init__(self, *errors: int) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.errors = list(errors)

    def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
        if self.errors:
            code = self.errors.pop(0)
            raise OSError(code, errno.errorcode[code])
        self.sent.append((data, addr))
        return len(data)


class _RecordingPort:
    def __init__(self, sock: _RecordingSocket) -> None:
        self.socket = sock
        self.written: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.written.append((data, addr))


def test_a_datagram_to_an_address_goes_to_the_socket_and_anything_else_through_the_ports_own_checks() -> None:
    sock = _RecordingSocket()
    port = _RecordingPort(sock)
    write_datagram(port, 4, "192.0.2.7", 5062, b"one")
    write_datagram(port, 6, "2001:db8::7", 5062, b"two")
    # a host name (sendto would look it up, blocking) and an IPv4 address on the IPv6 socket: Twisted decides
    write_datagram(port, 4, "phone.example.test", 5062, b"three")
    write_datagram(port, 6, "192.0.2.7", 5062, b"four")
    assert sock.sent == [(b"one", ("192.0.2.7", 5062)), (b"two", ("2001:db8::7", 5062))]
    assert port.written == [(b"three", ("phone.example.test", 5062)), (b"four", ("192.0.2.7", 5062))]


def test_a_datagram_write_is_retried_after_eintr_ignores_an_earlier_icmp_refusal_and_raises_the_rest() -> None:
    sock = _RecordingSocket(errno.EINTR)
    write_datagram(_RecordingPort(sock), 4, "192.0.2.7", 5062, b"again")
    assert sock.sent == [(b"again", ("192.0.2.7", 5062))]
    refused = _RecordingSocket(errno.ECONNREFUSED)
    write_datagram(_RecordingPort(refused), 4, "192.0.2.7", 5062, b"lost")
    assert refused.sent == []
    with pytest.raises(OSError) as raised:
        write_datagram(_RecordingPort(_RecordingSocket(errno.EMSGSIZE)), 4, "192.0.2.7", 5062, b"x" * 70000)
    assert raised.value.errno == errno.EMSGSIZE
