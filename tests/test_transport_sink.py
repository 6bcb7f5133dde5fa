"""The message sink: what the transport hands on, to whom, and the filters in front (RFC 3261 §18.2.1, RFC 3581).

Also the layer rule that makes the transport a leaf: it imports nothing
from the transaction layer, the proxy, the registrar or security.
"""

from __future__ import annotations

import ast
from pathlib import Path

from prometheus_client import generate_latest
from twisted.logger import LogLevel, capturedLogs

from sipproxy.message import ParseError, Request, Response, make_response, parse_message
from sipproxy.metrics import Metrics
from sipproxy.net import Source
from sipproxy.stack import Domains, SipStack
from sipproxy.transaction import TransactionLayer, TransactionSink
from sipproxy.transport import DatagramSender, Reply, SipDatagramProtocol, TransportLayer

try:
    from tests.fakes import FakeUDP
    from tests.messages import make_request
except ImportError:  # pragma: no cover
    from fakes import FakeUDP  # type: ignore[no-redef]
    from messages import make_request  # type: ignore[no-redef]

from twisted.internet.task import Clock

ROOT = Path(__file__).resolve().parents[1]
ALICE = ("192.0.2.7", 5062)
MALLORY = ("198.51.100.66", 5060)


def options(via: str = "SIP/2.0/UDP 10.0.0.7:5062;branch=z9hG4bK-s1;rport", call_id: str = "s1") -> bytes:
    """An OPTIONS to the server, Max-Forwards after CSeq as some phones write it."""
    return make_request(
        "OPTIONS",
        "sip:example.test",
        via=via,
        max_forwards=None,
        from_="<sip:alice@example.test>;tag=a1",
        to="<sip:example.test>",
        call_id=f"{call_id}@192.0.2.7",
        cseq="7 OPTIONS",
        extra=("Max-Forwards: 70",),
    )


class Recording:
    """A sink that records, optionally raising, or refusing what did not parse."""

    def __init__(self, parse_errors_answered: bool = True, raise_: Exception | None = None) -> None:
        self.messages: list[tuple[Request | Response, Source, bytes]] = []
        self.unparsed: list[tuple[ParseError, Source, int]] = []
        self.parse_errors_answered = parse_errors_answered
        self.raise_ = raise_

    def message_received(self, message: Request | Response, source: Source, data: bytes) -> None:
        self.messages.append((message, source, data))
        if self.raise_ is not None:
            raise self.raise_

    def unparseable(self, error: ParseError, source: Source, size: int) -> bool:
        self.unparsed.append((error, source, size))
        return self.parse_errors_answered


class Refusing:
    """A filter: refuses every request from MALLORY with a stateless 403, passes the rest on."""

    def __init__(self, next: TransactionSink, reply: Reply) -> None:
        self.next = next
        self.reply = reply

    def message_received(self, message: Request | Response, source: Source, data: bytes) -> None:
        if (source.host, source.port) == MALLORY and isinstance(message, Request):
            self.reply(make_response(message, 403, "Forbidden (test)", to_tag="x"), source)
            return
        self.next.message_received(message, source, data)

    def unparseable(self, error: ParseError, source: Source, size: int) -> bool:
        return (source.host, source.port) != MALLORY and self.next.unparseable(error, source, size)


def make(sink_for=None):  # type: ignore[no-untyped-def]
    metrics = Metrics()
    transport = TransportLayer(metrics=metrics)
    transport.register(DatagramSender(transport))
    udp = FakeUDP()
    proto = SipDatagramProtocol(transport, 4)
    proto.transport = udp  # type: ignore[assignment]
    proto.startProtocol()
    transactions = TransactionLayer(Clock(), transport, SipStack(Domains(["example.test"]), metrics))
    inner = TransactionSink(transactions, metrics)
    transport.sink = sink_for(inner, transport) if sink_for else inner
    return transport, udp, proto, transactions, metrics


def test_the_sink_gets_the_request_with_received_and_rport_already_stamped() -> None:
    transport, _, proto, _, _ = make()
    sink = Recording()
    transport.sink = sink
    data = options()
    proto.datagramReceived(data, ALICE)
    [(message, source, received)] = sink.messages
    assert source == Source("UDP", *ALICE) and received == data  # the bytes as they came
    assert message.top_via.received == "192.0.2.7" and message.top_via.rport == 5062  # type: ignore[union-attr]


def test_a_filter_in_front_answers_statelessly_and_the_transaction_layer_never_sees_it() -> None:
    transport, udp, proto, transactions, metrics = make(lambda inner, t: Refusing(inner, t.send_to_source))
    proto.datagramReceived(options(via="SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bK-m1", call_id="m1"), MALLORY)
    [(data, addr)] = udp.written
    assert addr == MALLORY  # straight back to the packet's source, not the Via's 10.9.9.9
    assert parse_message(data).status == 403  # type: ignore[union-attr]
    assert transactions.server_transaction_count() == 0
    proto.datagramReceived(options(call_id="a1"), ALICE)
    assert transactions.server_transaction_count() == 1
    text = generate_latest(metrics.registry).decode()
    assert 'sip_requests_received_total{method="OPTIONS"} 1.0' in text  # counted after admission only
    assert 'sip_responses_sent_total{status="403"} 1.0' in text


def test_what_does_not_parse_is_answered_only_when_the_sink_says_so() -> None:
    broken = options().replace(b"Max-Forwards: 70", b"Max-Forwards: x")
    transport, udp, proto, _, metrics = make(lambda inner, t: Refusing(inner, t.send_to_source))
    with capturedLogs() as events:
        proto.datagramReceived(broken, MALLORY)
    assert udp.written == []  # dropped silently
    assert [e for e in events if e["log_level"] >= LogLevel.info] == []
    proto.datagramReceived(broken, ALICE)
    [(data, addr)] = udp.written
    assert addr == ALICE and parse_message(data).status == 400  # type: ignore[union-attr]
    assert 'sip_parse_errors_total{transport="UDP"} 1.0' in generate_latest(metrics.registry).decode()


def test_a_parse_error_found_above_the_parser_is_answered_like_one_from_it() -> None:
    transport, udp, proto, _, _ = make()
    transport.sink = Recording(raise_=ParseError("Bad Event header", 400))
    proto.datagramReceived(options(), ALICE)
    [(data, _)] = udp.written
    response = parse_message(data)
    assert response.status == 400 and response.reason == "Bad Event header"  # type: ignore[union-attr]


def test_a_bug_in_the_sink_is_logged_and_goes_no_further() -> None:
    transport, udp, proto, _, _ = make()
    transport.sink = Recording(raise_=RuntimeError("boom"))
    with capturedLogs() as events:
        proto.datagramReceived(options(), ALICE)
    assert udp.written == []
    [bug] = [e for e in events if "log_failure" in e]
    assert bug["host"] == "192.0.2.7"


def test_the_transport_is_a_leaf() -> None:
    """transport/ imports sipproxy.net, message, metrics and Twisted only (TYPE_CHECKING blocks too)."""
    allowed = ("sipproxy.net", "sipproxy.message", "sipproxy.metrics", "sipproxy.transport")
    for path in sorted((ROOT / "sipproxy" / "transport").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith("sipproxy"):
                    assert name.startswith(allowed), f"{path.name} imports {name}"
